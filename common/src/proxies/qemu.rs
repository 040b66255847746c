//! Proxies of what qemu's daemon serves (filled in with its API).
