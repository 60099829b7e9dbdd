//! Checking a bearer JWT: signature, `exp`, `nbf`, `iss`, `aud`, and the
//! caller's subject and roles.
//!
//! The key is chosen by the token's algorithm, never the other way round:
//! HS256 only with the configured secret, RS256/ES256/... only with a key of
//! that family from the JWKS. So a token cannot make the host check an RSA
//! public key as an HMAC secret (algorithm confusion), and `alg: none` has
//! no key at all.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Who is calling, as the host tells a component in `rentcar-identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A verified token's subject and roles.
    User { sub: String, roles: Vec<String> },
    /// No token, on a public route.
    Anonymous,
    /// Authentication is turned off: every caller may do everything.
    Unchecked,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        match self {
            Identity::User { roles, .. } => roles.iter().any(|r| r == role),
            Identity::Anonymous => false,
            Identity::Unchecked => true,
        }
    }

    /// The `rentcar-identity` header's JSON value.
    pub fn to_json(&self) -> String {
        let value = match self {
            Identity::User { sub, roles } => serde_json::json!({ "kind": "user", "sub": sub, "roles": roles }),
            Identity::Anonymous => serde_json::json!({ "kind": "anonymous" }),
            Identity::Unchecked => serde_json::json!({ "kind": "unchecked" }),
        };
        value.to_string()
    }
}

/// Why a token was refused, for the 401's message.
pub type Refusal = String;

/// The keys and rules tokens are checked against.
pub struct Verifier {
    issuer: String,
    audience: String,
    leeway_s: u64,
    roles_claim: Option<String>,
    hs256: Option<DecodingKey>,
    jwks: Vec<PublicKey>,
}

/// One key of the JWKS.
struct PublicKey {
    id: Option<String>,
    /// The algorithm the JWKS pins the key to, if it does.
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

impl Verifier {
    pub fn new(
        config: &crate::config::Auth,
        hs256_secret: Option<&[u8]>,
        jwks: Option<&JwkSet>,
    ) -> anyhow::Result<Self> {
        let hs256 = hs256_secret.map(DecodingKey::from_secret).transpose()?;
        let mut keys = Vec::new();
        for jwk in jwks.map(|set| set.keys.as_slice()).unwrap_or_default() {
            let algorithm = match jwk.common.key_algorithm {
                Some(alg) => Some(Algorithm::try_from(alg).map_err(|_| {
                    anyhow::anyhow!("JWKS key {:?}: algorithm {alg:?} is not supported", jwk.common.key_id)
                })?),
                None => None,
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|err| anyhow::anyhow!("JWKS key {:?} cannot be read: {err}", jwk.common.key_id))?;
            if key.family() == AlgorithmFamily::Hmac {
                anyhow::bail!(
                    "JWKS key {:?} is a shared secret; a JWKS holds public keys",
                    jwk.common.key_id
                );
            }
            keys.push(PublicKey {
                id: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        Ok(Verifier {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            roles_claim: config.roles_claim.clone(),
            hs256,
            jwks: keys,
        })
    }

    /// The caller a token stands for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "the token is not a well-formed JWT".to_string())?;
        let alg = header.alg;
        let candidates: Vec<&DecodingKey> = match alg.family() {
            AlgorithmFamily::Hmac => self.hs256.iter().filter(|_| alg == Algorithm::HS256).collect(),
            family => self
                .jwks
                .iter()
                .filter(|key| key.key.family() == family && key.algorithm.is_none_or(|pinned| pinned == alg))
                .filter(|key| header.kid.is_none() || key.id == header.kid)
                .map(|key| &key.key)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(format!(
                "no key of this host verifies {alg:?} tokens{}",
                kid_note(header.kid.as_deref())
            ));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_s;
        let mut refusal = String::new();
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return self.identity(&data.claims),
                Err(err) => refusal = describe(err.kind()),
            }
        }
        Err(refusal)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, Refusal> {
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.trim().is_empty() => sub.clone(),
            _ => return Err("the token's `sub` must be a non-empty string".into()),
        };
        let claim_names = match &self.roles_claim {
            Some(name) => vec![name.as_str()],
            None => vec!["role", "roles"],
        };
        let mut roles = Vec::new();
        for name in claim_names {
            match claims.get(name) {
                None => {}
                Some(Value::String(role)) => roles.push(role.clone()),
                Some(Value::Array(list)) => {
                    for role in list {
                        let role = role
                            .as_str()
                            .ok_or_else(|| format!("the token's `{name}` must hold strings"))?;
                        roles.push(role.to_string());
                    }
                }
                Some(_) => return Err(format!("the token's `{name}` must be a string or an array of strings")),
            }
        }
        Ok(Identity::User { sub, roles })
    }
}

fn kid_note(kid: Option<&str>) -> String {
    kid.map(|kid| format!(" with key id `{kid}`")).unwrap_or_default()
}

fn describe(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "the token is for another audience (aud)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not fit its key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token lacks the `{claim}` claim"),
        _ => "the token is malformed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"a secret of at least thirty-two bytes";

    fn verifier() -> Verifier {
        Verifier::new(&crate::config::Auth::default(), Some(SECRET), None).unwrap()
    }

    fn token(claims: Value, alg: Algorithm, secret: &[u8]) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn a_valid_token_gives_its_subject_and_roles() {
        let claims = serde_json::json!({ "sub": "kim", "iss": "rentcar", "aud": "rentcar-api", "exp": now() + 60, "roles": ["customer"], "role": "admin" });
        let identity = verifier().verify(&token(claims, Algorithm::HS256, SECRET)).unwrap();
        assert_eq!(
            identity,
            Identity::User {
                sub: "kim".into(),
                roles: vec!["admin".into(), "customer".into()]
            }
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let base = |patch: Value| {
            let mut claims =
                serde_json::json!({ "sub": "kim", "iss": "rentcar", "aud": "rentcar-api", "exp": now() + 60 });
            for (key, value) in patch.as_object().unwrap() {
                claims[key] = value.clone();
            }
            claims
        };
        let cases = [
            (
                token(
                    base(serde_json::json!({ "exp": now() - 120 })),
                    Algorithm::HS256,
                    SECRET,
                ),
                "expired",
            ),
            (
                token(
                    base(serde_json::json!({ "nbf": now() + 120 })),
                    Algorithm::HS256,
                    SECRET,
                ),
                "not valid yet",
            ),
            (
                token(base(serde_json::json!({ "iss": "other" })), Algorithm::HS256, SECRET),
                "issuer",
            ),
            (
                token(base(serde_json::json!({ "aud": "other" })), Algorithm::HS256, SECRET),
                "audience",
            ),
            (
                token(
                    base(serde_json::json!({})),
                    Algorithm::HS256,
                    b"another secret, thirty-two bytes long",
                ),
                "signature",
            ),
            (token(base(serde_json::json!({})), Algorithm::HS512, SECRET), "no key"),
            (
                token(base(serde_json::json!({ "sub": "" })), Algorithm::HS256, SECRET),
                "sub",
            ),
            ("not.a.token".to_string(), "well-formed"),
        ];
        for (token, expected) in cases {
            let refusal = verifier().verify(&token).unwrap_err();
            assert!(refusal.contains(expected), "{refusal} should mention {expected}");
        }
    }

    #[test]
    fn alg_none_finds_no_key() {
        use base64::Engine as _;
        let b64 = |value: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
        let unsigned = format!(
            "{}.{}.",
            b64(serde_json::json!({ "alg": "none", "typ": "JWT" })),
            b64(serde_json::json!({ "sub": "kim", "iss": "rentcar", "aud": "rentcar-api", "exp": now() + 60 }))
        );
        assert!(verifier().verify(&unsigned).is_err());
    }
}
