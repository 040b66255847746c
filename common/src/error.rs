//! libvirt's error model and its one mapping onto the wire.
//!
//! Each layer of a daemon has its own `thiserror` enum; each converts into [`VirError`]
//! (a libvirt error number and libvirt's message text). [`BusError`] is what D-Bus
//! methods return: the error name `org.libvirt.Error` carrying that message, as
//! libvirt-dbus sends it. [`VirError::from_remote`] is the way back, for a daemon that
//! calls another: the code is read out of the message by the same templates that wrote it.

use std::fmt;

/// Declares [`ErrorCode`] from one table: each row is a variant, libvirt's
/// `virErrorNumber` for it and libvirt's message template (virerror.c), `%s` being the
/// detail. The same rows build messages ([`VirError::new`]) and read codes back out of
/// them ([`ErrorCode::from_message`]), so the two cannot drift apart.
macro_rules! error_codes {
    ($($code:ident = $number:literal => $template:literal,)*) => {
        /// libvirt's `virErrorNumber` values for the errors this project raises.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum ErrorCode {
            $($code = $number,)*
        }

        impl ErrorCode {
            /// Every code, in the table's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$code,)*];

            /// libvirt's message template for the code, `%s` being the detail.
            fn template(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => $template,)*
                }
            }
        }
    };
}

error_codes! {
    InternalError = 1 => "internal error: %s",
    NoSupport = 3 => "this function is not supported by the connection driver: %s",
    InvalidArg = 8 => "invalid argument: %s",
    OperationFailed = 9 => "operation failed: %s",
    XmlError = 27 => "XML error: %s",
    OperationDenied = 29 => "operation forbidden: %s",
    ConfSyntax = 33 => "configuration file syntax error: %s",
    NetworkExist = 37 => "network %s exists already",
    SystemError = 38 => "%s",
    NoDomain = 42 => "Domain not found: %s",
    NoNetwork = 43 => "Network not found: %s",
    AuthFailed = 45 => "authentication failed: %s",
    NoStoragePool = 49 => "Storage pool not found: %s",
    NoStorageVol = 50 => "Storage volume not found: %s",
    NoNodeDevice = 53 => "Node device not found: %s",
    OperationInvalid = 55 => "Requested operation is not valid: %s",
    NoInterface = 57 => "Interface not found: %s",
    MultipleInterfaces = 59 => "multiple matching interfaces found: %s",
    NoNwfilter = 62 => "Network filter not found: %s",
    BuildFirewall = 63 => "Error while building firewall: %s",
    InvalidSecret = 65 => "Invalid secret: %s",
    NoSecret = 66 => "Secret not found: %s",
    ConfigUnsupported = 67 => "unsupported configuration: %s",
    OperationTimeout = 68 => "Timed out during operation: %s",
    NoDomainSnapshot = 72 => "Domain snapshot not found: %s",
    ArgumentUnsupported = 74 => "argument unsupported: %s",
    StoragePoolBuilt = 76 => "storage pool already built: %s",
    OperationAborted = 78 => "operation aborted: %s",
    NoDomainMetadata = 80 => "metadata not found: %s",
    BlockCopyActive = 83 => "block copy still active: %s",
    OperationUnsupported = 84 => "Operation not supported: %s",
    AgentUnresponsive = 86 => "Guest agent is not responding: %s",
    ResourceBusy = 87 => "resource busy: %s",
    AccessDenied = 88 => "access denied: %s",
    StorageVolExist = 90 => "storage volume %s exists already",
    CpuIncompatible = 91 => "the CPU is incompatible with host CPU: %s",
    DeviceMissing = 99 => "device not found: %s",
    NetworkPortExist = 106 => "network port %s exists already",
    NoNwfilterBinding = 101 => "Network filter binding not found: %s",
    NoNetworkPort = 107 => "network port not found: %s",
}

impl ErrorCode {
    /// The code whose template produced `message`: the template's text before and after
    /// `%s` must open and close it, and where several fit ("network %s exists already"
    /// and "network port %s exists already") the one with the most fixed text wins.
    /// SystemError's bare `%s` fits any text, so a message no other template explains
    /// (a libvirt error this project never raises) decodes as SystemError.
    pub fn from_message(message: &str) -> ErrorCode {
        ErrorCode::ALL
            .iter()
            .filter_map(|&code| {
                let (before, after) = code.template().split_once("%s")?;
                let fits = message.len() >= before.len() + after.len()
                    && message.starts_with(before)
                    && message.ends_with(after);
                fits.then_some((before.len() + after.len(), code))
            })
            .max_by_key(|&(fixed, _)| fixed)
            .map_or(ErrorCode::SystemError, |(_, code)| code)
    }
}

/// One libvirt error: its number and the full message a user reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirError {
    pub code: ErrorCode,
    pub message: String,
}

impl VirError {
    pub fn new(code: ErrorCode, detail: impl fmt::Display) -> Self {
        let message = code.template().replacen("%s", &detail.to_string(), 1);
        Self { code, message }
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::InternalError, detail)
    }

    pub fn invalid_arg(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidArg, detail)
    }

    pub fn xml(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::XmlError, detail)
    }

    pub fn operation_invalid(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::OperationInvalid, detail)
    }

    pub fn operation_failed(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::OperationFailed, detail)
    }

    pub fn unsupported(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::ConfigUnsupported, detail)
    }

    /// A system call or file operation failed: `what` names it, as libvirt's
    /// `virReportSystemError` does ("cannot open 'x': No such file or directory").
    pub fn system(what: impl fmt::Display, err: &std::io::Error) -> Self {
        Self::new(ErrorCode::SystemError, format!("{what}: {err}"))
    }

    /// libvirt rejects flags it does not know with this exact wording.
    pub fn unsupported_flags(unknown: u32) -> Self {
        Self::new(
            ErrorCode::InvalidArg,
            format!("unsupported flags (0x{unknown:x})"),
        )
    }

    /// The libvirt error another daemon replied with: an `org.libvirt.Error` carries only
    /// the message text, so the code is read back from it by [`ErrorCode::from_message`].
    /// None for every other failure (no reply, another error name, no message), which
    /// the caller words itself since only it knows which daemon it was asking and why.
    pub fn from_remote(e: &zbus::Error) -> Option<VirError> {
        match e {
            zbus::Error::MethodError(name, Some(message), _) if name.as_str() == BUS_ERROR_NAME => {
                Some(VirError {
                    code: ErrorCode::from_message(message),
                    message: message.clone(),
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for VirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VirError {}

impl From<crate::xml::XmlError> for VirError {
    fn from(e: crate::xml::XmlError) -> Self {
        VirError::xml(e)
    }
}

/// Fails with libvirt's message when `flags` holds bits outside `known`.
pub fn check_flags(flags: u32, known: u32) -> Result<(), VirError> {
    match flags & !known {
        0 => Ok(()),
        unknown => Err(VirError::unsupported_flags(unknown)),
    }
}

/// Reads a method's `flags` argument into its typed set; a bit the set does not know
/// is refused as libvirt refuses it (`unsupported flags (0x..)`).
pub fn flags<F: bitflags::Flags<Bits = u32>>(flags: u32) -> Result<F, VirError> {
    check_flags(flags, F::all().bits())?;
    Ok(F::from_bits_retain(flags))
}

/// The D-Bus error name of [`BusError::Error`], as libvirt-dbus names it.
const BUS_ERROR_NAME: &str = "org.libvirt.Error";

/// The error every D-Bus method of every daemon returns.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.libvirt")]
pub enum BusError {
    /// zbus' own failures (bad arguments and the like).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// `org.libvirt.Error`, carrying libvirt's message text.
    Error(String),
}

impl From<VirError> for BusError {
    fn from(e: VirError) -> Self {
        BusError::Error(e.message)
    }
}

pub type BusResult<T> = Result<T, BusError>;

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn messages_follow_libvirt_templates() {
        let e = VirError::new(ErrorCode::NoDomain, "no domain with matching name 'x'");
        assert_eq!(
            e.message,
            "Domain not found: no domain with matching name 'x'"
        );
        assert_eq!(
            VirError::unsupported_flags(0x10).message,
            "invalid argument: unsupported flags (0x10)"
        );
        assert!(check_flags(3, 3).is_ok());
        assert!(check_flags(4, 3).is_err());
    }

    /// A method call for replies to answer.
    fn call() -> zbus::message::Message {
        zbus::message::Message::method_call("/org/libvirt/Test", "Call")
            .and_then(|b| b.build(&()))
            .expect("method call")
    }

    /// What a caller's proxy hands back when a method fails with `e`: the reply a
    /// daemon sends for it, through D-Bus' serialisation, as zbus turns it into an error.
    fn over_the_wire(e: VirError) -> zbus::Error {
        let reply = BusError::from(e)
            .create_reply(&call().header())
            .expect("error reply");
        zbus::Error::from(reply)
    }

    #[test]
    fn every_code_survives_the_wire() {
        for &code in ErrorCode::ALL {
            assert_eq!(code.template().matches("%s").count(), 1, "{code:?}");
            let sent = VirError::new(code, "no object with matching name 'x: y'");
            let received = VirError::from_remote(&over_the_wire(sent.clone()));
            assert_eq!(received, Some(sent), "{code:?}");
        }
    }

    #[test]
    fn decoding_prefers_the_most_specific_template() {
        assert_eq!(
            ErrorCode::from_message("network port abc exists already"),
            ErrorCode::NetworkPortExist
        );
        assert_eq!(
            ErrorCode::from_message("network default exists already"),
            ErrorCode::NetworkExist
        );
        // "network " opens it and " exists already" closes it, but they would overlap.
        assert_eq!(
            ErrorCode::from_message("network exists already"),
            ErrorCode::SystemError
        );
        assert_eq!(
            ErrorCode::from_message("Domain snapshot not found: no snapshot 's'"),
            ErrorCode::NoDomainSnapshot
        );
        assert_eq!(
            ErrorCode::from_message("Network filter not found: no nwfilter with matching name 'f'"),
            ErrorCode::NoNwfilter
        );
        // A libvirt error this project never raises.
        assert_eq!(
            ErrorCode::from_message("Domain checkpoint not found: no checkpoint 'c'"),
            ErrorCode::SystemError
        );
    }

    #[test]
    fn other_failures_are_not_libvirt_errors() {
        assert_eq!(VirError::from_remote(&zbus::Error::InvalidReply), None);
        // Text a libvirt template would explain, under another error name.
        let reply = zbus::message::Message::error(
            &call().header(),
            "org.freedesktop.DBus.Error.ServiceUnknown",
        )
        .and_then(|b| b.build(&("internal error: not activatable",)))
        .expect("error reply");
        assert_eq!(VirError::from_remote(&zbus::Error::from(reply)), None);
    }

    #[test]
    fn wire_name_is_org_libvirt_error() {
        let b: BusError = VirError::internal("boom").into();
        assert_eq!(b.name().as_str(), "org.libvirt.Error");
        assert_eq!(b.name().as_str(), BUS_ERROR_NAME);
        assert_eq!(b.description(), Some("internal error: boom"));
    }
}
