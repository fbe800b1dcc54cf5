//! PROVISIONAL stand-in for the auth module built on branch `auth` (OIDC bearer JWTs,
//! memberships). It has exactly the interface the API write handlers use, and its extractor
//! rejects every request with `401`: until the real module replaces this file, nothing can
//! write through the API (no test depends on a bypass).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// System role `admin`: writes everything.
    pub admin: bool,
}

impl Principal {
    /// Admin, or a member of `account` (memberships in the database).
    pub async fn can_write_account(
        &self,
        _db: &crate::db::Db,
        _account: &str,
    ) -> Result<bool, crate::db::Error> {
        Ok(self.admin)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({ "error": "authentication is not configured on this server" })),
        )
            .into_response())
    }
}
