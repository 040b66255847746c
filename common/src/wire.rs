//! What zvariant's types do not show of a message: the exact bytes of its header
//! signature.

/// The body signature of `msg` exactly as its header carries it on the wire. zvariant
/// shows a body of one struct `(ii)` and a body of two values `ii` the same way, so the
/// shape of a reply can only be told from the bytes (and a message rebuilt from the
/// parsed signature may change shape: see [`signature_for`]).
pub fn body_signature(msg: &zbus::Message) -> anyhow::Result<String> {
    let data: &[u8] = msg.data();
    let le = match data.first() {
        Some(b'l') => true,
        Some(b'B') => false,
        _ => anyhow::bail!("not a D-Bus message"),
    };
    let u32_at = |i: usize| -> anyhow::Result<u32> {
        let b: [u8; 4] = data
            .get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("header cut short"))?;
        Ok(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let end = 16 + u32_at(12)? as usize;
    let mut i = 16;
    while i < end {
        i = i.next_multiple_of(8);
        let code = *data
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("header cut short"))?;
        let sig_len = *data.get(i + 1).unwrap_or(&0) as usize;
        let sig = data.get(i + 2..i + 2 + sig_len).unwrap_or_default();
        i += 2 + sig_len + 1;
        match sig {
            b"g" => {
                let n = *data.get(i).unwrap_or(&0) as usize;
                let value = data.get(i + 1..i + 1 + n).unwrap_or_default();
                if code == 8 {
                    return Ok(String::from_utf8_lossy(value).into_owned());
                }
                i += 1 + n + 1;
            }
            b"s" | b"o" => {
                i = i.next_multiple_of(4);
                i += 4 + u32_at(i)? as usize + 1;
            }
            b"u" => i = i.next_multiple_of(4) + 4,
            other => anyhow::bail!("unexpected header field type {other:?}"),
        }
    }
    Ok(String::new())
}

/// A signature that zbus writes into a new message's header as exactly `wire`: zbus
/// treats a body signature as the structure of its arguments and writes it without
/// its outer parentheses, so a body of one struct needs them twice.
pub fn signature_for(wire: &str) -> zbus::Result<zbus::zvariant::Signature> {
    if wire.is_empty() {
        return Ok(zbus::zvariant::Signature::Unit);
    }
    Ok(zbus::zvariant::Signature::try_from(
        format!("({wire})").as_str(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::body_signature;

    #[test]
    fn one_struct_and_two_values_differ() {
        let build = |one: bool| {
            let b = zbus::Message::method_call("/a", "b").expect("builder");
            if one {
                b.build(&((1i32, 2i32),))
            } else {
                b.build(&(1i32, 2i32))
            }
            .expect("message")
        };
        assert_eq!(body_signature(&build(true)).expect("sig"), "(ii)");
        assert_eq!(body_signature(&build(false)).expect("sig"), "ii");
    }
}
