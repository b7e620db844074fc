//! Reading numbers, flags, bytes and fields out of dynamically decoded SCALE values.
//!
//! Runtime types change between subtensor releases in ways that do not change their meaning:
//! `u16` becomes `NetUid(u16)`, `u64` becomes `AlphaCurrency(u64)`, fields are added. These
//! readers look through single-field wrappers and find fields by name, so one reader serves
//! every runtime version.

use subxt::ext::scale_value::{Composite, Primitive, Value, ValueDef};

/// Looks through newtype wrappers (`struct NetUid(u16)`) to the value inside.
fn unwrap<T>(mut value: &Value<T>) -> &Value<T> {
    while let ValueDef::Composite(composite) = &value.value {
        let mut inner = composite.values();
        match (inner.next(), inner.next()) {
            (Some(only), None) => value = only,
            _ => break,
        }
    }
    value
}

pub fn number<T>(value: &Value<T>) -> Option<u128> {
    match &unwrap(value).value {
        ValueDef::Primitive(Primitive::U128(n)) => Some(*n),
        ValueDef::Primitive(Primitive::I128(n)) => u128::try_from(*n).ok(),
        _ => None,
    }
}

pub fn boolean<T>(value: &Value<T>) -> Option<bool> {
    match &unwrap(value).value {
        ValueDef::Primitive(Primitive::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// The elements of a sequence, tuple or array.
pub fn items<T>(value: &Value<T>) -> Option<Vec<&Value<T>>> {
    match &value.value {
        ValueDef::Composite(Composite::Unnamed(values)) => Some(values.iter().collect()),
        ValueDef::Composite(Composite::Named(fields)) if fields.is_empty() => Some(Vec::new()),
        _ => None,
    }
}

/// A byte string or byte array (`Vec<u8>`, `[u8; 32]`, `AccountId32([u8; 32])`).
pub fn bytes<T>(value: &Value<T>) -> Option<Vec<u8>> {
    // An account is a wrapper around an array: look through it (but not through a one-byte
    // array, whose single element is a number, not a composite).
    let value = match &value.value {
        ValueDef::Composite(composite) => {
            let mut inner = composite.values();
            match (inner.next(), inner.next()) {
                (Some(only), None) if matches!(only.value, ValueDef::Composite(_)) => only,
                _ => value,
            }
        }
        _ => value,
    };
    items(value)?
        .into_iter()
        .map(|byte| match byte.value {
            ValueDef::Primitive(Primitive::U128(n)) => u8::try_from(n).ok(),
            _ => None,
        })
        .collect()
}

pub fn account<T>(value: &Value<T>) -> Option<[u8; 32]> {
    bytes(value)?.try_into().ok()
}

/// The named field of a struct.
pub fn field<'a, T>(value: &'a Value<T>, name: &str) -> Option<&'a Value<T>> {
    match &value.value {
        ValueDef::Composite(Composite::Named(fields)) => fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value),
        _ => None,
    }
}

/// The variant name and its values, for an enum value.
pub fn variant<T>(value: &Value<T>) -> Option<(&str, Vec<&Value<T>>)> {
    match &value.value {
        ValueDef::Variant(variant) => {
            Some((variant.name.as_str(), variant.values.values().collect()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_through_newtypes() {
        let wrapped = Value::unnamed_composite([Value::u128(3)]);
        assert_eq!(number(&wrapped), Some(3));
        let named = Value::named_composite([("0", Value::unnamed_composite([Value::u128(7)]))]);
        assert_eq!(number(&named), Some(7));
        assert_eq!(number(&Value::bool(true)), None);
        assert_eq!(
            boolean(&Value::unnamed_composite([Value::bool(true)])),
            Some(true)
        );
    }

    #[test]
    fn accounts_and_byte_strings() {
        let raw = [9u8; 32];
        let array = Value::from_bytes(raw);
        assert_eq!(account(&array), Some(raw));
        let wrapped = Value::unnamed_composite([Value::from_bytes(raw)]);
        assert_eq!(account(&wrapped), Some(raw));
        let named = Value::named_composite([("0", Value::from_bytes(raw))]);
        assert_eq!(account(&named), Some(raw));
        assert_eq!(account(&Value::from_bytes([1u8; 3])), None);
        assert_eq!(bytes(&Value::from_bytes(b"hi")), Some(b"hi".to_vec()));
    }

    #[test]
    fn fields_and_variants() {
        let value = Value::named_composite([
            ("a", Value::u128(1)),
            (
                "b",
                Value::variant("Raw2", Composite::unnamed([Value::from_bytes(b"ok")])),
            ),
        ]);
        assert_eq!(field(&value, "a").and_then(number), Some(1));
        let (name, values) = variant(field(&value, "b").expect("b")).expect("variant");
        assert_eq!(name, "Raw2");
        assert_eq!(bytes(values[0]), Some(b"ok".to_vec()));
        assert!(field(&value, "c").is_none());
    }
}
