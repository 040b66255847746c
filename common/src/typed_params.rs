//! libvirt's typed-parameter lists as libvirt-dbus puts them on the wire: an `a{sv}`
//! whose every value is a variant holding the value's own variant (its `util.c` wraps
//! each one with `g_variant_new_variant`). cockpit-machines reads `value.v.v`, so a
//! single-wrapped reply looks empty to it. Servers return [`TypedParams`]; the
//! generated client proxies read it back with one level unwrapped.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use serde::de::Error as _;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zbus::zvariant::{OwnedValue, Signature, Type, Value};

/// Field name to value, double-wrapped on the wire.
#[derive(Debug, Default, PartialEq)]
pub struct TypedParams(pub HashMap<String, OwnedValue>);

impl Type for TypedParams {
    const SIGNATURE: &'static Signature = <HashMap<String, OwnedValue> as Type>::SIGNATURE;
}

impl Serialize for TypedParams {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            let inner = v.try_clone().map_err(S::Error::custom)?;
            map.serialize_entry(k, &Value::Value(Box::new(inner.into())))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TypedParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = HashMap::<String, OwnedValue>::deserialize(d)?;
        let mut out = HashMap::with_capacity(raw.len());
        for (k, v) in raw {
            let v = match Value::from(v) {
                Value::Value(inner) => OwnedValue::try_from(*inner).map_err(D::Error::custom)?,
                single => OwnedValue::try_from(single).map_err(D::Error::custom)?,
            };
            out.insert(k, v);
        }
        Ok(TypedParams(out))
    }
}

impl From<HashMap<String, OwnedValue>> for TypedParams {
    fn from(m: HashMap<String, OwnedValue>) -> Self {
        TypedParams(m)
    }
}

impl Deref for TypedParams {
    type Target = HashMap<String, OwnedValue>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for TypedParams {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::serialized::Context;
    use zbus::zvariant::{to_bytes, LE};

    #[test]
    fn double_wrapped_on_the_wire_and_read_back() {
        let mut p = TypedParams::default();
        p.insert("state.state".into(), OwnedValue::from(1i32));
        let ctx = Context::new_dbus(LE, 0);
        let bytes = to_bytes(ctx, &p).unwrap();
        // Read raw, as a client that does not unwrap would: the value is a variant.
        let (raw, _): (HashMap<String, OwnedValue>, _) = bytes.deserialize().unwrap();
        let v: &Value = &raw["state.state"];
        assert!(
            matches!(v, Value::Value(inner) if **inner == Value::I32(1)),
            "{v:?}"
        );
        let (back, _): (TypedParams, _) = bytes.deserialize().unwrap();
        assert_eq!(back, p);
    }
}
