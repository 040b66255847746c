//! libvirt's lifecycle events, domain states and their reasons as types. The numbers
//! are libvirt's (`virDomainEventType`, `virDomainState`, ...) and appear only at the
//! wire edge, through [`DomainEvent::wire`], [`DomainState::wire`] and friends.

/// A C-like enum with libvirt's numbers, convertible both ways at the wire edge.
macro_rules! wire_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $n:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum $name { $($(#[$vm])* $v = $n),+ }

        impl $name {
            /// Every value, in libvirt's order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// libvirt's number.
            pub const fn wire(self) -> i32 {
                self as i32
            }

            pub fn from_wire(n: i32) -> Option<Self> {
                match n {
                    $($n => Some($name::$v),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// `virDomainState`.
    pub enum DomainState {
        NoState = 0, Running = 1, Blocked = 2, Paused = 3, Shutdown = 4, Shutoff = 5,
        Crashed = 6, PmSuspended = 7,
    }
}

wire_enum! {
    /// `virDomainRunningReason`.
    pub enum RunningReason {
        Unknown = 0, Booted = 1, Migrated = 2, Restored = 3, FromSnapshot = 4, Unpaused = 5,
        MigrationCanceled = 6, SaveCanceled = 7, Wakeup = 8, Crashed = 9, Postcopy = 10,
        PostcopyFailed = 11,
    }
}

wire_enum! {
    /// `virDomainPausedReason`.
    pub enum PausedReason {
        Unknown = 0, User = 1, Migration = 2, Save = 3, Dump = 4, IoError = 5, Watchdog = 6,
        FromSnapshot = 7, ShuttingDown = 8, Snapshot = 9, Crashed = 10, StartingUp = 11,
        Postcopy = 12, PostcopyFailed = 13, ApiError = 14,
    }
}

wire_enum! {
    /// `virDomainShutdownReason`.
    pub enum ShutdownReason { Unknown = 0, User = 1 }
}

wire_enum! {
    /// `virDomainShutoffReason`.
    pub enum ShutoffReason {
        Unknown = 0, Shutdown = 1, Destroyed = 2, Crashed = 3, Migrated = 4, Saved = 5,
        Failed = 6, FromSnapshot = 7, Daemon = 8,
    }
}

wire_enum! {
    /// `virDomainCrashedReason`.
    pub enum CrashedReason { Unknown = 0, Panicked = 1 }
}

/// A domain's state with its reason, as `virDomainGetState` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateReason {
    NoState,
    Running(RunningReason),
    Blocked,
    Paused(PausedReason),
    Shutdown(ShutdownReason),
    Shutoff(ShutoffReason),
    Crashed(CrashedReason),
    PmSuspended,
}

impl StateReason {
    pub fn state(self) -> DomainState {
        match self {
            StateReason::NoState => DomainState::NoState,
            StateReason::Running(_) => DomainState::Running,
            StateReason::Blocked => DomainState::Blocked,
            StateReason::Paused(_) => DomainState::Paused,
            StateReason::Shutdown(_) => DomainState::Shutdown,
            StateReason::Shutoff(_) => DomainState::Shutoff,
            StateReason::Crashed(_) => DomainState::Crashed,
            StateReason::PmSuspended => DomainState::PmSuspended,
        }
    }

    /// `(state, reason)` as libvirt numbers them.
    pub fn wire(self) -> (i32, i32) {
        let reason = match self {
            StateReason::NoState | StateReason::Blocked | StateReason::PmSuspended => 0,
            StateReason::Running(r) => r.wire(),
            StateReason::Paused(r) => r.wire(),
            StateReason::Shutdown(r) => r.wire(),
            StateReason::Shutoff(r) => r.wire(),
            StateReason::Crashed(r) => r.wire(),
        };
        (self.state().wire(), reason)
    }

    /// Reads libvirt's numbers; an unknown reason becomes the state's `Unknown`.
    pub fn from_wire(state: i32, reason: i32) -> Option<Self> {
        Some(match DomainState::from_wire(state)? {
            DomainState::NoState => StateReason::NoState,
            DomainState::Running => StateReason::Running(
                RunningReason::from_wire(reason).unwrap_or(RunningReason::Unknown),
            ),
            DomainState::Blocked => StateReason::Blocked,
            DomainState::Paused => StateReason::Paused(
                PausedReason::from_wire(reason).unwrap_or(PausedReason::Unknown),
            ),
            DomainState::Shutdown => StateReason::Shutdown(
                ShutdownReason::from_wire(reason).unwrap_or(ShutdownReason::Unknown),
            ),
            DomainState::Shutoff => StateReason::Shutoff(
                ShutoffReason::from_wire(reason).unwrap_or(ShutoffReason::Unknown),
            ),
            DomainState::Crashed => StateReason::Crashed(
                CrashedReason::from_wire(reason).unwrap_or(CrashedReason::Unknown),
            ),
            DomainState::PmSuspended => StateReason::PmSuspended,
        })
    }
}

wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_DEFINED`.
    pub enum DefinedDetail { Added = 0, Updated = 1, Renamed = 2, FromSnapshot = 3 }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_UNDEFINED`.
    pub enum UndefinedDetail { Removed = 0, Renamed = 1 }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_STARTED`.
    pub enum StartedDetail { Booted = 0, Migrated = 1, Restored = 2, FromSnapshot = 3, Wakeup = 4 }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_SUSPENDED`.
    pub enum SuspendedDetail {
        Paused = 0, Migrated = 1, IoError = 2, Watchdog = 3, Restored = 4, FromSnapshot = 5,
        ApiError = 6, Postcopy = 7, PostcopyFailed = 8,
    }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_RESUMED`.
    pub enum ResumedDetail {
        Unpaused = 0, Migrated = 1, FromSnapshot = 2, Postcopy = 3, PostcopyFailed = 4,
    }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_STOPPED`.
    pub enum StoppedDetail {
        Shutdown = 0, Destroyed = 1, Crashed = 2, Migrated = 3, Saved = 4, Failed = 5,
        FromSnapshot = 6,
    }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_SHUTDOWN`.
    pub enum ShutdownDetail { Finished = 0, Guest = 1, Host = 2 }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_PMSUSPENDED`.
    pub enum PmSuspendedDetail { Memory = 0, Disk = 1 }
}
wire_enum! {
    /// Details of `VIR_DOMAIN_EVENT_CRASHED`.
    pub enum CrashedDetail { Panicked = 0, Crashloaded = 1 }
}

/// A domain lifecycle event with its detail (`DomainEvent` signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainEvent {
    Defined(DefinedDetail),
    Undefined(UndefinedDetail),
    Started(StartedDetail),
    Suspended(SuspendedDetail),
    Resumed(ResumedDetail),
    Stopped(StoppedDetail),
    Shutdown(ShutdownDetail),
    PmSuspended(PmSuspendedDetail),
    Crashed(CrashedDetail),
}

impl DomainEvent {
    /// `(event, detail)` as libvirt numbers them.
    pub fn wire(self) -> (i32, i32) {
        match self {
            DomainEvent::Defined(d) => (0, d.wire()),
            DomainEvent::Undefined(d) => (1, d.wire()),
            DomainEvent::Started(d) => (2, d.wire()),
            DomainEvent::Suspended(d) => (3, d.wire()),
            DomainEvent::Resumed(d) => (4, d.wire()),
            DomainEvent::Stopped(d) => (5, d.wire()),
            DomainEvent::Shutdown(d) => (6, d.wire()),
            DomainEvent::PmSuspended(d) => (7, d.wire()),
            DomainEvent::Crashed(d) => (8, d.wire()),
        }
    }

    pub fn from_wire(event: i32, detail: i32) -> Option<Self> {
        Some(match event {
            0 => DomainEvent::Defined(DefinedDetail::from_wire(detail)?),
            1 => DomainEvent::Undefined(UndefinedDetail::from_wire(detail)?),
            2 => DomainEvent::Started(StartedDetail::from_wire(detail)?),
            3 => DomainEvent::Suspended(SuspendedDetail::from_wire(detail)?),
            4 => DomainEvent::Resumed(ResumedDetail::from_wire(detail)?),
            5 => DomainEvent::Stopped(StoppedDetail::from_wire(detail)?),
            6 => DomainEvent::Shutdown(ShutdownDetail::from_wire(detail)?),
            7 => DomainEvent::PmSuspended(PmSuspendedDetail::from_wire(detail)?),
            8 => DomainEvent::Crashed(CrashedDetail::from_wire(detail)?),
            _ => return None,
        })
    }
}

wire_enum! {
    /// `virNetworkEventLifecycleType` (`NetworkEvent` signal; it has no detail).
    pub enum NetworkEvent { Defined = 0, Undefined = 1, Started = 2, Stopped = 3 }
}

wire_enum! {
    /// `virStoragePoolEventLifecycleType` (`StoragePoolEvent`; detail is always 0).
    pub enum StoragePoolEvent {
        Defined = 0, Undefined = 1, Started = 2, Stopped = 3, Created = 4, Deleted = 5,
    }
}

wire_enum! {
    /// `virSecretEventLifecycleType` (`SecretEvent`; detail is always 0).
    pub enum SecretEvent { Defined = 0, Undefined = 1 }
}

wire_enum! {
    /// `virNodeDeviceEventLifecycleType` (`NodeDeviceEvent`; detail is always 0).
    pub enum NodeDeviceEvent { Created = 0, Deleted = 1, Defined = 2, Undefined = 3 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_numbers() {
        assert_eq!(DomainEvent::Stopped(StoppedDetail::Failed).wire(), (5, 5));
        assert_eq!(DomainEvent::Shutdown(ShutdownDetail::Guest).wire(), (6, 1));
        assert_eq!(StateReason::Paused(PausedReason::User).wire(), (3, 1));
        assert_eq!(StateReason::Shutoff(ShutoffReason::Daemon).wire(), (5, 8));
        assert_eq!(NetworkEvent::Stopped.wire(), 3);
        assert_eq!(StoragePoolEvent::Deleted.wire(), 5);
        assert_eq!(NodeDeviceEvent::Undefined.wire(), 3);
    }

    #[test]
    fn every_event_round_trips() {
        for e in 0..9 {
            for d in 0..10 {
                if let Some(ev) = DomainEvent::from_wire(e, d) {
                    assert_eq!(ev.wire(), (e, d));
                }
            }
        }
        for s in DomainState::ALL {
            let sr = StateReason::from_wire(s.wire(), 1).unwrap();
            assert_eq!(sr.state(), *s);
            assert_eq!(StateReason::from_wire(sr.wire().0, sr.wire().1), Some(sr));
        }
    }
}
