//! Proxies of what nodedev's daemon serves (filled in with its API).
