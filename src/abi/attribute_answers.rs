//! `C_GetAttributeValue`'s per-attribute rules (PKCS#11 2.40 section 5.7), kept free of raw
//! pointers so they can be tested on their own.

use crate::api::AttributeAnswer;
use crate::rv::Rv;
use pkcs11_sys::CKR_BUFFER_TOO_SMALL;

/// What to do with one template entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome<'a> {
    /// Copy these bytes into `pValue` and set `ulValueLen` to their length.
    Copy(&'a [u8]),
    /// `pValue` was NULL: set `ulValueLen` to this length only.
    Length(usize),
    /// Set `ulValueLen = CK_UNAVAILABLE_INFORMATION`; the call fails with this code.
    Unavailable(Rv),
}

/// The rule for one attribute. `buffer` is the caller's `ulValueLen` when `pValue` is non-NULL,
/// `None` when `pValue` is NULL.
pub(crate) fn outcome(answer: &AttributeAnswer, buffer: Option<usize>) -> Outcome<'_> {
    match answer {
        AttributeAnswer::Sensitive => Outcome::Unavailable(Rv::ATTRIBUTE_SENSITIVE),
        AttributeAnswer::Invalid => Outcome::Unavailable(Rv::ATTRIBUTE_TYPE_INVALID),
        AttributeAnswer::Value(value) => match buffer {
            None => Outcome::Length(value.len()),
            Some(cap) if cap >= value.len() => Outcome::Copy(value),
            Some(_) => Outcome::Unavailable(Rv(CKR_BUFFER_TOO_SMALL)),
        },
    }
}

/// Rank of a failure code; the spec lets a module return any of the codes that apply, this
/// module always prefers SENSITIVE over TYPE_INVALID over BUFFER_TOO_SMALL.
fn rank(rv: Rv) -> u8 {
    match rv {
        Rv::ATTRIBUTE_SENSITIVE => 3,
        Rv::ATTRIBUTE_TYPE_INVALID => 2,
        _ => 1,
    }
}

/// Combine the overall result with one more attribute's failure code.
pub(crate) fn worse(current: Option<Rv>, next: Rv) -> Option<Rv> {
    match current {
        Some(rv) if rank(rv) >= rank(next) => Some(rv),
        _ => Some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_attribute_rules() {
        let v = AttributeAnswer::Value(vec![1, 2, 3]);
        assert_eq!(outcome(&v, None), Outcome::Length(3));
        assert_eq!(outcome(&v, Some(3)), Outcome::Copy(&[1, 2, 3]));
        assert_eq!(outcome(&v, Some(64)), Outcome::Copy(&[1, 2, 3]));
        assert_eq!(
            outcome(&v, Some(2)),
            Outcome::Unavailable(Rv(CKR_BUFFER_TOO_SMALL))
        );
        assert_eq!(
            outcome(&AttributeAnswer::Sensitive, None),
            Outcome::Unavailable(Rv::ATTRIBUTE_SENSITIVE)
        );
        assert_eq!(
            outcome(&AttributeAnswer::Sensitive, Some(100)),
            Outcome::Unavailable(Rv::ATTRIBUTE_SENSITIVE)
        );
        assert_eq!(
            outcome(&AttributeAnswer::Invalid, Some(8)),
            Outcome::Unavailable(Rv::ATTRIBUTE_TYPE_INVALID)
        );
        let empty = AttributeAnswer::Value(vec![]);
        assert_eq!(outcome(&empty, Some(0)), Outcome::Copy(&[]));
    }

    #[test]
    fn failure_priority_is_order_independent() {
        let small = Rv(CKR_BUFFER_TOO_SMALL);
        let all = [Rv::ATTRIBUTE_TYPE_INVALID, small, Rv::ATTRIBUTE_SENSITIVE];
        let fwd = all.iter().fold(None, |acc, rv| worse(acc, *rv));
        let rev = all.iter().rev().fold(None, |acc, rv| worse(acc, *rv));
        assert_eq!(fwd, Some(Rv::ATTRIBUTE_SENSITIVE));
        assert_eq!(rev, Some(Rv::ATTRIBUTE_SENSITIVE));
        assert_eq!(
            worse(worse(None, small), Rv::ATTRIBUTE_TYPE_INVALID),
            Some(Rv::ATTRIBUTE_TYPE_INVALID)
        );
        assert_eq!(worse(None, small), Some(small));
    }
}
