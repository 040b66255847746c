//! Proxies of what storage's daemon serves (filled in with its API).
