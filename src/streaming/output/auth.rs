//! Credentials for the `logdog` output: a service-account JSON key (signed JWT exchanged for an
//! OAuth access token, refreshed before it expires) or a file holding an `access_token`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::OutputError;

/// Scopes the Butler needs: identity for the Coordinator, publishing for Pub/Sub.
pub const SCOPES: &str =
    "https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/pubsub";

#[derive(Clone)]
pub enum Credentials {
    /// A ready bearer token.
    Token(String),
    /// A service account: its email, PKCS#8 private key and token endpoint.
    ServiceAccount { email: String, key_pkcs8: Vec<u8>, token_uri: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Credentials::Token(..)"),
            Credentials::ServiceAccount { email, token_uri, .. } => {
                write!(f, "Credentials::ServiceAccount({email}, {token_uri})")
            }
        }
    }
}

impl Credentials {
    /// Parses a credentials JSON file's contents.
    pub fn from_json(text: &str) -> Result<Credentials, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if let Some(t) = v.get("access_token").and_then(|t| t.as_str()) {
            return Ok(Credentials::Token(t.to_owned()));
        }
        let field =
            |k: &str| v.get(k).and_then(|x| x.as_str()).ok_or_else(|| format!("no {k:?} field"));
        let email = field("client_email")?.to_owned();
        let pem = field("private_key")?;
        let token_uri = v
            .get("token_uri")
            .and_then(|x| x.as_str())
            .unwrap_or("https://oauth2.googleapis.com/token")
            .to_owned();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let key_pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| format!("private_key is not PEM: {e}"))?;
        aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&key_pkcs8)
            .map_err(|e| format!("private_key: {e}"))?;
        Ok(Credentials::ServiceAccount { email, key_pkcs8, token_uri })
    }
}

/// The signed JWT a service account exchanges for an access token.
pub fn signed_jwt(
    email: &str,
    key_pkcs8: &[u8],
    token_uri: &str,
    now: SystemTime,
) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "iss": email, "scope": SCOPES, "aud": token_uri, "iat": iat, "exp": iat + 3600 });
    let claims = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(key_pkcs8)
        .map_err(|e| format!("private key: {e}"))?;
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "signing the JWT failed".to_owned())?;
    Ok(format!("{signing_input}.{}", b64.encode(sig)))
}

/// Hands out a valid bearer token, fetching a new one shortly before the old one expires.
#[derive(Debug)]
pub struct TokenSource {
    creds: Credentials,
    cached: std::sync::Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    pub fn new(creds: Credentials) -> Self {
        TokenSource { creds, cached: std::sync::Mutex::new(None) }
    }

    pub async fn token(&self, client: &reqwest::Client) -> Result<String, OutputError> {
        let (email, key, uri) = match &self.creds {
            Credentials::Token(t) => return Ok(t.clone()),
            Credentials::ServiceAccount { email, key_pkcs8, token_uri } => {
                (email, key_pkcs8, token_uri)
            }
        };
        if let Some((t, until)) = self.cached.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let err = |m: String| OutputError::Other(format!("service-account token from {uri}: {m}"));
        let jwt = signed_jwt(email, key, uri, SystemTime::now()).map_err(err)?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
        );
        let resp = client
            .post(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| err(e.to_string()))?;
        if !status.is_success() {
            return Err(err(format!("HTTP {status}: {}", text.trim())));
        }
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| err("no access_token in the reply".into()))?
            .to_owned();
        // A hostile or broken server's lifetime is clamped to something sane (Google's is 3600).
        let life = v["expires_in"].as_u64().unwrap_or(3600).clamp(60, 24 * 3600);
        // Refresh five minutes early (or halfway, for short-lived tokens).
        let margin = (life / 2).min(300);
        let until = Instant::now() + Duration::from_secs(life - margin);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((token.clone(), until));
        Ok(token)
    }
}
