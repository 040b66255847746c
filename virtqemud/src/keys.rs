//! `SendKey`'s key codes, translated to what QEMU's `send-key` takes as numbers:
//! "QNUM", the XT scancode set 1 with an extended `0xe0 XX` code written `0x80 | XX`.
//! libvirt translates between all its code sets through generated tables; here the
//! sets whose keys map onto scancode set 1 directly are taken, and a key that has no
//! such mapping is refused by its code.

use common::error::{ErrorCode, VirError};

/// libvirt's `virKeycodeSet` numbers and names.
const SETS: &[&str] = &[
    "linux", "xt", "atset1", "atset2", "atset3", "osx", "xt_kbd", "usb", "win32", "qnum",
];

/// At most this many keys at once (VIR_DOMAIN_SEND_KEY_MAX_KEYS).
pub const MAX_KEYS: usize = 16;

/// Linux input key codes from 96 up and their set-1 scancodes (from 1 to 88 the two
/// are the same numbers, but for 84 and 85, which have none).
const LINUX_EXTENDED: &[(u32, u32)] = &[
    (96, 0xe01c),  // KP Enter
    (97, 0xe01d),  // Right Ctrl
    (98, 0xe035),  // KP /
    (99, 0x54),    // SysRq
    (100, 0xe038), // Right Alt
    (102, 0xe047), // Home
    (103, 0xe048), // Up
    (104, 0xe049), // Page Up
    (105, 0xe04b), // Left
    (106, 0xe04d), // Right
    (107, 0xe04f), // End
    (108, 0xe050), // Down
    (109, 0xe051), // Page Down
    (110, 0xe052), // Insert
    (111, 0xe053), // Delete
    (113, 0xe020), // Mute
    (114, 0xe02e), // Volume Down
    (115, 0xe030), // Volume Up
    (116, 0xe05e), // Power
    (119, 0xe046), // Pause
    (125, 0xe05b), // Left Meta
    (126, 0xe05c), // Right Meta
    (127, 0xe05d), // Compose
];

/// A set-1 scancode (`0xe0XX` for extended keys) as QEMU's number.
fn set1_to_qnum(code: u32) -> Option<u32> {
    match code {
        1..=0x7f => Some(code),
        0xe001..=0xe07f => Some(0x80 | (code & 0x7f)),
        _ => None,
    }
}

/// `keycodes` of `codeset` as QEMU's numbers.
pub fn to_qnum(codeset: u32, keycodes: &[u32]) -> Result<Vec<u32>, VirError> {
    let set = *SETS
        .get(codeset as usize)
        .ok_or_else(|| VirError::invalid_arg(format!("unknown keycode set {codeset}")))?;
    if keycodes.is_empty() {
        return Err(VirError::invalid_arg("no keycodes given"));
    }
    if keycodes.len() > MAX_KEYS {
        return Err(VirError::invalid_arg(format!(
            "too many keycodes: {} (at most {MAX_KEYS})",
            keycodes.len()
        )));
    }
    keycodes
        .iter()
        .map(|&code| {
            let qnum = match set {
                "qnum" => (1..=0xff).contains(&code).then_some(code),
                "xt" | "atset1" => set1_to_qnum(code),
                "linux" => match code {
                    1..=83 | 86..=88 => Some(code),
                    _ => LINUX_EXTENDED
                        .iter()
                        .find(|(l, _)| *l == code)
                        .and_then(|(_, s)| set1_to_qnum(*s)),
                },
                _ => {
                    return Err(VirError::new(
                        ErrorCode::ArgumentUnsupported,
                        format!(
                        "keycode set '{set}' is not supported here (use linux, xt, atset1 or qnum)"
                    ),
                    ))
                }
            };
            qnum.ok_or_else(|| {
                VirError::invalid_arg(format!(
                    "cannot translate keycode {code} of {set} codeset to qnum keycode"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_map_onto_qnum() {
        // Ctrl+Alt+Delete: linux 29, 56, 111.
        assert_eq!(
            to_qnum(0, &[29, 56, 111]).expect("linux"),
            [0x1d, 0x38, 0xd3]
        );
        assert_eq!(
            to_qnum(1, &[0x1d, 0x38, 0xe053]).expect("xt"),
            [0x1d, 0x38, 0xd3]
        );
        assert_eq!(
            to_qnum(9, &[0x1d, 0x38, 0xd3]).expect("qnum"),
            [0x1d, 0x38, 0xd3]
        );
        assert_eq!(to_qnum(0, &[103]).expect("up"), [0xc8]);
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(to_qnum(10, &[1])
            .unwrap_err()
            .message
            .contains("unknown keycode set 10"));
        assert!(to_qnum(7, &[4]).unwrap_err().message.contains("'usb'"));
        assert!(to_qnum(0, &[]).is_err());
        assert!(to_qnum(0, &[1; 17])
            .unwrap_err()
            .message
            .contains("too many"));
        assert!(to_qnum(0, &[0x300])
            .unwrap_err()
            .message
            .contains("keycode 768"));
        assert!(to_qnum(9, &[0]).is_err());
    }
}
