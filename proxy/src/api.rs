//! Wire types of the XKS Proxy API v1 and its error names.
//!
//! Request fields are all `Option` so a missing field becomes a ValidationException naming it
//! (not a serde message); unknown fields are ignored as the spec requires.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// The error names of the spec, with their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: bad/missing field, bad base64, wrong sizes.
    Validation,
    /// 400: key disabled.
    InvalidState,
    /// 400: decrypt authentication failure.
    InvalidCiphertext,
    /// 400: key cannot do this operation.
    InvalidKeyUsage,
    /// 401: SigV4 missing/invalid/expired.
    AuthenticationFailed,
    /// 403: secondary authorization denied.
    AccessDenied,
    /// 404: no such key.
    KeyNotFound,
    /// 404: unknown path or prefix.
    InvalidUriPath,
    /// 405: not a POST (named ValidationException on the wire).
    MethodNotAllowed,
    /// 413: body over the limit (named ValidationException on the wire).
    PayloadTooLarge,
    /// 408: body not received within the read timeout (named ValidationException on the
    /// wire; the connection is closed after it).
    RequestTimeout,
    /// 429: quota or overload.
    Throttling,
    /// 501: unsupported algorithm or input beyond what we support.
    UnsupportedOperation,
    /// 503: HSM did not answer in time.
    DependencyTimeout,
    /// 500: anything else.
    Internal,
}

impl ErrorKind {
    /// HTTP status.
    pub fn status(self) -> u16 {
        use ErrorKind::*;
        match self {
            Validation | InvalidState | InvalidCiphertext | InvalidKeyUsage => 400,
            AuthenticationFailed => 401,
            AccessDenied => 403,
            KeyNotFound | InvalidUriPath => 404,
            MethodNotAllowed => 405,
            PayloadTooLarge => 413,
            RequestTimeout => 408,
            Throttling => 429,
            UnsupportedOperation => 501,
            DependencyTimeout => 503,
            Internal => 500,
        }
    }

    /// `errorName` on the wire.
    pub fn name(self) -> &'static str {
        use ErrorKind::*;
        match self {
            Validation | MethodNotAllowed | PayloadTooLarge | RequestTimeout => {
                "ValidationException"
            }
            InvalidState => "InvalidStateException",
            InvalidCiphertext => "InvalidCiphertextException",
            InvalidKeyUsage => "InvalidKeyUsageException",
            AuthenticationFailed => "AuthenticationFailedException",
            AccessDenied => "AccessDeniedException",
            KeyNotFound => "KeyNotFoundException",
            InvalidUriPath => "InvalidUriPathException",
            Throttling => "ThrottlingException",
            UnsupportedOperation => "UnsupportedOperationException",
            DependencyTimeout => "DependencyTimeoutException",
            Internal => "InternalException",
        }
    }
}

/// An API error: kind plus a short printable-ASCII message (never secrets or data).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Which error.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    /// Build an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for ValidationException.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// The JSON body `{"errorName":..., "errorMessage":...}`.
    pub fn body(&self) -> Vec<u8> {
        let msg: String = self
            .message
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(500)
            .collect();
        serde_json::to_vec(&ErrorBody {
            error_name: self.kind.name(),
            error_message: msg,
        })
        .unwrap_or_default()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    error_name: &'static str,
    error_message: String,
}

/// `requestMetadata`, present in every request body.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMetadata {
    /// Caller principal (required except health).
    pub aws_principal_arn: Option<String>,
    /// KMS key ARN (required for encrypt/decrypt).
    pub kms_key_arn: Option<String>,
    /// KMS operation name (any value accepted).
    pub kms_operation: Option<String>,
    /// Correlation id (required).
    pub kms_request_id: Option<String>,
    /// Source VPC id.
    pub aws_source_vpc: Option<String>,
    /// Source VPC endpoint id.
    pub aws_source_vpce: Option<String>,
    /// Calling service.
    pub kms_via_service: Option<String>,
}

/// Every request body carries `requestMetadata`: the router parses, logs and checks it the same
/// way for each operation.
pub trait HasRequestMetadata {
    /// The body's requestMetadata, if it has one.
    fn request_metadata(&self) -> Option<&RequestMetadata>;
}

macro_rules! has_request_metadata {
    ($($ty:ty),*) => {$(
        impl HasRequestMetadata for $ty {
            fn request_metadata(&self) -> Option<&RequestMetadata> {
                self.request_metadata.as_ref()
            }
        }
    )*};
}
has_request_metadata!(MetadataOnlyRequest, EncryptRequest<'_>, DecryptRequest<'_>);

/// GetKeyMetadata and GetHealthStatus bodies.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOnlyRequest {
    /// requestMetadata.
    pub request_metadata: Option<RequestMetadata>,
}

/// A JSON string field borrowed from the request body when it has no escapes (the large base64
/// fields: no copy of up to ~90 KB per request), owned when it has (`"\/"` is valid JSON, and
/// some encoders write it).
#[derive(Debug, Default)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `Option<Text>` as `Option<&str>`.
pub fn text<'s>(v: &'s Option<Text<'_>>) -> Option<&'s str> {
    v.as_ref().map(Text::as_str)
}

/// Encrypt body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptRequest<'a> {
    /// requestMetadata.
    pub request_metadata: Option<RequestMetadata>,
    /// base64 plaintext.
    #[serde(borrow)]
    pub plaintext: Option<Text<'a>>,
    /// Must be AES_GCM.
    pub encryption_algorithm: Option<String>,
    /// base64 AAD.
    #[serde(borrow)]
    pub additional_authenticated_data: Option<Text<'a>>,
    /// SHA_256 when a CDIV is wanted.
    pub ciphertext_data_integrity_value_algorithm: Option<String>,
}

/// Decrypt body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecryptRequest<'a> {
    /// requestMetadata.
    pub request_metadata: Option<RequestMetadata>,
    /// base64 ciphertext.
    #[serde(borrow)]
    pub ciphertext: Option<Text<'a>>,
    /// base64 IV (12 or 16 bytes).
    pub initialization_vector: Option<String>,
    /// base64 tag (16 bytes).
    pub authentication_tag: Option<String>,
    /// Must be AES_GCM.
    pub encryption_algorithm: Option<String>,
    /// base64 AAD.
    #[serde(borrow)]
    pub additional_authenticated_data: Option<Text<'a>>,
    /// base64 metadata (<= 20 bytes).
    pub ciphertext_metadata: Option<String>,
}

/// GetKeyMetadata response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyMetadataResponse {
    /// Always AES_256.
    pub key_spec: &'static str,
    /// ENCRYPT and/or DECRYPT.
    pub key_usage: Vec<&'static str>,
    /// ENABLED or DISABLED.
    pub key_status: &'static str,
}

/// Encrypt response: bytes, written as base64 JSON by [`EncryptResponse::to_json`].
#[derive(Debug)]
pub struct EncryptResponse<'a> {
    /// 16-byte tag.
    pub authentication_tag: &'a [u8],
    /// Ciphertext.
    pub ciphertext: &'a [u8],
    /// CDIV when requested.
    pub ciphertext_data_integrity_value: Option<[u8; 32]>,
    /// Proxy metadata bound into the tag.
    pub ciphertext_metadata: &'a [u8],
    /// IV.
    pub initialization_vector: &'a [u8],
}

impl EncryptResponse<'_> {
    /// The JSON body (fields in the order serde wrote them before: alphabetical).
    pub fn to_json(&self) -> Vec<u8> {
        let cdiv = self.ciphertext_data_integrity_value;
        let fields: [(&str, Option<&[u8]>); 5] = [
            ("authenticationTag", Some(self.authentication_tag)),
            ("ciphertext", Some(self.ciphertext)),
            (
                "ciphertextDataIntegrityValue",
                cdiv.as_ref().map(|d| &d[..]),
            ),
            ("ciphertextMetadata", Some(self.ciphertext_metadata)),
            ("initializationVector", Some(self.initialization_vector)),
        ];
        base64_object(&fields)
    }
}

/// Decrypt response.
#[derive(Debug)]
pub struct DecryptResponse<'a> {
    /// Plaintext (written as base64).
    pub plaintext: &'a [u8],
}

impl DecryptResponse<'_> {
    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        base64_object(&[("plaintext", Some(self.plaintext))])
    }
}

/// A JSON object of base64 string values (`None` fields left out), written straight into one
/// buffer of the exact size: the Encrypt/Decrypt responses, on every request, without
/// serde_json's per-character escape scan (names are static ASCII, base64 needs no escaping).
fn base64_object(fields: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let b64 = base64_simd::STANDARD;
    let present = || fields.iter().filter_map(|(n, v)| Some((*n, (*v)?)));
    // `{` `}`, and per field `"name":"value"` plus a comma.
    let len = 2 + present()
        .map(|(n, v)| n.len() + b64.encoded_length(v.len()) + 6)
        .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(b'{');
    for (i, (name, value)) in present().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":\"");
        b64.encode_append(value, &mut out);
        out.push(b'"');
    }
    out.push(b'}');
    out
}

/// One HSM behind the proxy, in the health response.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EkmFleetMember {
    /// Identifier (token label / serial).
    pub id: String,
    /// Model.
    pub model: String,
    /// ACTIVE, DEGRADED or UNAVAILABLE.
    pub health_status: &'static str,
}

/// GetHealthStatus response.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthResponse {
    /// Number of proxy instances.
    pub xks_proxy_fleet_size: u32,
    /// Our vendor string.
    pub xks_proxy_vendor: &'static str,
    /// Product and version.
    pub xks_proxy_model: String,
    /// HSM vendor.
    pub ekm_vendor: String,
    /// 1..10 backends.
    pub ekm_fleet_details: Vec<EkmFleetMember>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const REF: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// The hand-written bodies are the JSON serde_json wrote before (same fields, same order),
    /// for every length class of base64 (padding 0, 1, 2) and with and without the CDIV.
    #[test]
    fn responses_are_the_json_serde_wrote() {
        for n in [0usize, 1, 2, 3, 4, 4096, 4097, 4098] {
            let ct: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            for cdiv in [None, Some([0xabu8; 32])] {
                let r = EncryptResponse {
                    authentication_tag: &[9u8; 16],
                    ciphertext: &ct,
                    ciphertext_data_integrity_value: cdiv,
                    ciphertext_metadata: &[1],
                    initialization_vector: &[7u8; 12],
                };
                let mut want = serde_json::json!({
                    "authenticationTag": REF.encode([9u8; 16]),
                    "ciphertext": REF.encode(&ct),
                    "ciphertextMetadata": REF.encode([1]),
                    "initializationVector": REF.encode([7u8; 12]),
                });
                if let Some(d) = cdiv {
                    want["ciphertextDataIntegrityValue"] = REF.encode(d).into();
                }
                // serde_json's map keeps keys sorted: the order the derive wrote them in.
                assert_eq!(r.to_json(), serde_json::to_vec(&want).unwrap(), "n={n}");
                let body = DecryptResponse { plaintext: &ct }.to_json();
                let want = serde_json::json!({ "plaintext": REF.encode(&ct) });
                assert_eq!(body, serde_json::to_vec(&want).unwrap(), "n={n}");
            }
        }
    }

    /// Large fields are borrowed from the body when they can be, and read correctly when they
    /// cannot (escapes), or are absent, or are not strings.
    #[test]
    fn text_fields_borrow_or_own() {
        let body = br#"{"plaintext":"QUJD","additionalAuthenticatedData":"YW\/h"}"#;
        let r: EncryptRequest = serde_json::from_slice(body).unwrap();
        assert!(matches!(
            r.plaintext.as_ref().unwrap().0,
            Cow::Borrowed("QUJD")
        ));
        let aad = r.additional_authenticated_data.as_ref().unwrap();
        assert!(matches!(aad.0, Cow::Owned(_)));
        assert_eq!(text(&r.additional_authenticated_data), Some("YW/h"));

        let r: DecryptRequest = serde_json::from_slice(b"{}").unwrap();
        assert!(r.ciphertext.is_none() && r.additional_authenticated_data.is_none());
        let r: DecryptRequest = serde_json::from_slice(br#"{"ciphertext":null}"#).unwrap();
        assert!(r.ciphertext.is_none());
        for bad in [&br#"{"ciphertext":5}"#[..], br#"{"ciphertext":["a"]}"#] {
            let e = serde_json::from_slice::<DecryptRequest>(bad).unwrap_err();
            assert!(e.to_string().contains("expected a string"), "{e}");
        }
    }
}
