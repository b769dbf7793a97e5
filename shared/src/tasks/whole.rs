//! Whole numbers as JSON counts them: `5` and `5.0` are the same number (JSON Schema's
//! `integer` takes both), so a count written with a zero fraction is that count. A
//! fraction, a negative number or one out of the field's range is refused as before.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// `deserialize_with` for an optional whole-number field (`Option<u32>`, `Option<u64>`).
pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_option(OptionVisitor(PhantomData))
}

struct OptionVisitor<T>(PhantomData<T>);

impl<'de, T: TryFrom<u64>> Visitor<'de> for OptionVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(WholeVisitor(PhantomData)).map(Some)
    }
}

struct WholeVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> WholeVisitor<T> {
    fn fit<E: de::Error>(n: u64) -> Result<T, E> {
        T::try_from(n).map_err(|_| {
            E::invalid_value(
                de::Unexpected::Unsigned(n),
                &format!("a whole number up to {}", std::any::type_name::<T>()).as_str(),
            )
        })
    }
}

impl<'de, T: TryFrom<u64>> Visitor<'de> for WholeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a whole number ({})", std::any::type_name::<T>())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        Self::fit(n)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        u64::try_from(n)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            .and_then(Self::fit)
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<T, E> {
        // Below 2^64 every f64 with no fraction is exactly a u64.
        if x.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&x) {
            Self::fit(x as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(x), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Counts {
        #[serde(default, deserialize_with = "super::option")]
        small: Option<u32>,
        #[serde(default, deserialize_with = "super::option")]
        big: Option<u64>,
    }

    fn read(json: &str) -> Result<(Option<u32>, Option<u64>), String> {
        serde_json::from_str::<Counts>(json)
            .map(|c| (c.small, c.big))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_zero_fraction_is_the_same_number_and_anything_else_is_refused() {
        assert_eq!(read(r#"{"small": 5, "big": 7}"#), Ok((Some(5), Some(7))));
        assert_eq!(
            read(r#"{"small": 5.0, "big": 1e3}"#),
            Ok((Some(5), Some(1000)))
        );
        assert_eq!(read(r#"{"small": null}"#), Ok((None, None)));
        assert_eq!(read("{}"), Ok((None, None)));
        assert_eq!(
            read(r#"{"big": 18446744073709551615}"#),
            Ok((None, Some(u64::MAX)))
        );
        for bad in [
            r#"{"small": 5.5}"#,
            r#"{"small": -1}"#,
            r#"{"small": -1.0}"#,
            r#"{"small": 4294967296}"#,
            r#"{"small": 4294967296.0}"#,
            r#"{"big": 18446744073709551616}"#,
            r#"{"big": 1e20}"#,
            r#"{"small": "5"}"#,
            r#"{"small": true}"#,
        ] {
            let error = read(bad).unwrap_err();
            assert!(
                error.contains("small") || error.contains("big") || error.contains("whole"),
                "{bad}: {error}"
            );
        }
    }
}
