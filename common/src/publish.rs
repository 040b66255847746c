//! How a driver tells the outside world what changed without knowing D-Bus: it hands
//! typed changes (its own enum: object added or removed, lifecycle event, state
//! changed) to a [`Publisher`], which the daemon's D-Bus layer implements by
//! registering objects on the hub and emitting the zbus-declared signals.
//!
//! Publishing is awaited, so the ordering guarantees hold: once `publish` returns an
//! added object is served, before the reply that names it and before its signal.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

/// Makes one change visible; returns when it is.
pub trait Publisher<C>: Send + Sync + 'static {
    fn publish(&self, change: C) -> BoxFuture<'_, ()>;
}

/// The driver's end: connected once to the D-Bus layer after the driver exists (the
/// layer needs the driver to build its interface objects). Changes published before
/// that are dropped, which is only what the driver does while loading; the D-Bus
/// layer serves every object it finds when it connects.
pub struct Outbox<C> {
    to: OnceLock<Arc<dyn Publisher<C>>>,
}

impl<C> Default for Outbox<C> {
    fn default() -> Self {
        Outbox {
            to: OnceLock::new(),
        }
    }
}

impl<C: 'static> Outbox<C> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the publisher; a second call is ignored (there is one D-Bus layer).
    pub fn connect(&self, publisher: Arc<dyn Publisher<C>>) {
        let _ = self.to.set(publisher);
    }

    pub async fn send(&self, change: C) {
        if let Some(p) = self.to.get() {
            p.publish(change).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Log(Mutex<Vec<u32>>);
    impl Publisher<u32> for Log {
        fn publish(&self, change: u32) -> BoxFuture<'_, ()> {
            self.0.lock().unwrap().push(change);
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn delivers_in_order_once_connected() {
        let out = Outbox::new();
        out.send(1).await;
        let log = Arc::new(Log(Mutex::new(Vec::new())));
        out.connect(log.clone());
        out.send(2).await;
        out.send(3).await;
        assert_eq!(*log.0.lock().unwrap(), vec![2, 3]);
    }
}
