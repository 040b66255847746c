//! libvirt's error model and its one mapping onto the wire.
//!
//! Each layer of a daemon has its own `thiserror` enum; each converts into [`VirError`]
//! (a libvirt error number and libvirt's message text). [`BusError`] is what D-Bus
//! methods return: the error name `org.libvirt.Error` carrying that message, as
//! libvirt-dbus sends it.

use std::fmt;

/// libvirt's `virErrorNumber` values for the errors this project raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    InternalError = 1,
    NoSupport = 3,
    InvalidArg = 8,
    OperationFailed = 9,
    XmlError = 27,
    OperationDenied = 29,
    ConfSyntax = 33,
    NetworkExist = 37,
    SystemError = 38,
    NoDomain = 42,
    NoNetwork = 43,
    NoStoragePool = 49,
    NoStorageVol = 50,
    NoNodeDevice = 53,
    OperationInvalid = 55,
    ConfigUnsupported = 67,
    OperationTimeout = 68,
    ArgumentUnsupported = 74,
    StoragePoolBuilt = 76,
    OperationUnsupported = 84,
    AgentUnresponsive = 86,
    ResourceBusy = 87,
    AccessDenied = 88,
    StorageVolExist = 90,
    DeviceMissing = 99,
    NetworkPortExist = 106,
    NoNetworkPort = 107,
}

impl ErrorCode {
    /// libvirt's message template for the code (virerror.c), `%s` being the detail.
    fn template(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InternalError => "internal error: %s",
            NoSupport => "this function is not supported by the connection driver: %s",
            InvalidArg => "invalid argument: %s",
            OperationFailed => "operation failed: %s",
            XmlError => "XML error: %s",
            OperationDenied => "operation forbidden: %s",
            ConfSyntax => "configuration file syntax error: %s",
            NetworkExist => "network %s exists already",
            SystemError => "%s",
            NoDomain => "Domain not found: %s",
            NoNetwork => "Network not found: %s",
            NoStoragePool => "Storage pool not found: %s",
            NoStorageVol => "Storage volume not found: %s",
            NoNodeDevice => "Node device not found: %s",
            OperationInvalid => "Requested operation is not valid: %s",
            ConfigUnsupported => "unsupported configuration: %s",
            OperationTimeout => "Timed out during operation: %s",
            ArgumentUnsupported => "argument unsupported: %s",
            StoragePoolBuilt => "storage pool already built: %s",
            OperationUnsupported => "Operation not supported: %s",
            AgentUnresponsive => "Guest agent is not responding: %s",
            ResourceBusy => "resource busy: %s",
            AccessDenied => "access denied: %s",
            StorageVolExist => "storage volume %s exists already",
            DeviceMissing => "device not found: %s",
            NetworkPortExist => "network port %s exists already",
            NoNetworkPort => "network port not found: %s",
        }
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

    #[test]
    fn wire_name_is_org_libvirt_error() {
        let b: BusError = VirError::internal("boom").into();
        assert_eq!(b.name().as_str(), "org.libvirt.Error");
        assert_eq!(b.description(), Some("internal error: boom"));
    }
}
