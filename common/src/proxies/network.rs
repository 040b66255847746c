//! Proxies of what network's daemon serves (filled in with its API).
