//! Where the keys come from: the configured HS256 secret, a JWKS file or
//! URL, or a secret the host makes at first start and keeps in its data
//! directory; and minting tokens with the secret (`rentcar-host token`).

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::config::Auth;

/// HS256 secrets shorter than this could be guessed offline from one token.
const MIN_SECRET_BYTES: usize = 32;

/// The HS256 secret: the configured one, else (without a JWKS either) the
/// one kept in `<data_dir>/auth.key`, made on first use.
pub fn hs256_secret(config: &Auth, data_dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(secret) = config.hs256_secret.as_deref().filter(|secret| !secret.is_empty()) {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "[auth] hs256_secret (or RENTCAR_JWT_SECRET) must be at least {MIN_SECRET_BYTES} bytes"
        );
        return Ok(Some(secret.as_bytes().to_vec()));
    }
    if config.jwks.is_some() {
        return Ok(None);
    }
    generated_secret(&Auth::key_file(data_dir)).map(Some)
}

/// Reads the secret in `path`, or makes one there (readable by the owner
/// only).
fn generated_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim();
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_BYTES,
                "{} holds a secret shorter than {MIN_SECRET_BYTES} bytes; delete it to make a new one",
                path.display()
            );
            return Ok(secret.as_bytes().to_vec());
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("no randomness for a secret: {err}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let created = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    match created {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(file = %path.display(), "made a secret for signing tokens; `rentcar-host token` uses it");
            Ok(secret.into_bytes())
        }
        // Another process (say, `rentcar-host token`) made it meanwhile.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => generated_secret(path),
        Err(err) => Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The JWKS of `[auth] jwks`: a file, or an `http(s)://` URL read once.
pub async fn jwks(config: &Auth) -> anyhow::Result<Option<JwkSet>> {
    let Some(source) = config.jwks.as_deref() else {
        return Ok(None);
    };
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(source)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("cannot fetch the JWKS at {source}"))?;
        response
            .text()
            .await
            .with_context(|| format!("cannot read the JWKS at {source}"))?
    } else {
        std::fs::read_to_string(source).with_context(|| format!("cannot read the JWKS file {source}"))?
    };
    let set: JwkSet = serde_json::from_str(&text).with_context(|| format!("{source} is not a JWKS"))?;
    anyhow::ensure!(!set.keys.is_empty(), "the JWKS at {source} has no keys");
    Ok(Some(set))
}

/// A token for `sub` with `roles`, valid for `ttl`, signed with `secret`.
pub fn mint(config: &Auth, secret: &[u8], sub: &str, roles: &[String], ttl: Duration) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": config.issuer,
        "aud": config.audience,
        "sub": sub,
        "roles": roles,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret)?,
    )?)
}

/// `90s`, `15m`, `1h`, `7d`, or plain seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 1h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit is s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }

    #[test]
    fn the_generated_secret_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = hs256_secret(&Auth::default(), dir.path()).unwrap().unwrap();
        let again = hs256_secret(&Auth::default(), dir.path()).unwrap().unwrap();
        assert_eq!(first, again);
        assert_eq!(first.len(), 64);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(Auth::key_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
