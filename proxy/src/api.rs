//! Wire types of the XKS Proxy API v1 and its error names.
//!
//! Request fields are all `Option` so a missing field becomes a ValidationException naming it
//! (not a serde message); unknown fields are ignored as the spec requires.

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

/// GetKeyMetadata and GetHealthStatus bodies.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOnlyRequest {
    /// requestMetadata.
    pub request_metadata: Option<RequestMetadata>,
}

/// Encrypt body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptRequest {
    /// requestMetadata.
    pub request_metadata: Option<RequestMetadata>,
    /// base64 plaintext.
    pub plaintext: Option<String>,
    /// Must be AES_GCM.
    pub encryption_algorithm: Option<String>,
    /// base64 AAD.
    pub additional_authenticated_data: Option<String>,
    /// SHA_256 when a CDIV is wanted.
    pub ciphertext_data_integrity_value_algorithm: Option<String>,
}

/// Decrypt body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecryptRequest {
    /// requestMetadata.
    pub request_metadata: Option<RequestMetadata>,
    /// base64 ciphertext.
    pub ciphertext: Option<String>,
    /// base64 IV (12 or 16 bytes).
    pub initialization_vector: Option<String>,
    /// base64 tag (16 bytes).
    pub authentication_tag: Option<String>,
    /// Must be AES_GCM.
    pub encryption_algorithm: Option<String>,
    /// base64 AAD.
    pub additional_authenticated_data: Option<String>,
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

/// Encrypt response (all byte fields base64).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptResponse {
    /// 16-byte tag.
    pub authentication_tag: String,
    /// Ciphertext.
    pub ciphertext: String,
    /// CDIV when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_data_integrity_value: Option<String>,
    /// Proxy metadata bound into the tag.
    pub ciphertext_metadata: String,
    /// IV.
    pub initialization_vector: String,
}

/// Decrypt response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecryptResponse {
    /// base64 plaintext.
    pub plaintext: String,
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
