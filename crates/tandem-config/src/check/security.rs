//! Checks a listener's `authorization` policy and a route's `jwt` section.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::{closest, Checker};
use crate::model::{
    Authorization, AuthzAction, AuthzPath, AuthzRule, Cidr, IdentityMatch, Jwks, JwksSource, Jwt,
    JwtAlgorithm, ListenerProtocol,
};
use crate::raw::{
    RawAuthorization, RawAuthzAction, RawAuthzRule, RawDirection, RawJwks, RawJwt, RawListener,
};

/// The default accepted algorithms: asymmetric only.
const DEFAULT_ALGORITHMS: [JwtAlgorithm; 3] = [
    JwtAlgorithm::RS256,
    JwtAlgorithm::ES256,
    JwtAlgorithm::EdDSA,
];

/// A listener's `normalize_path`: on by default for inbound listeners and wherever a policy
/// reads paths; turning it off under path rules would make them bypassable, so that is refused.
pub(super) fn check_normalize_path(c: &mut Checker, key: &str, l: &RawListener) -> bool {
    let outbound = matches!(l.direction, Some(RawDirection::Outbound));
    match l.normalize_path {
        Some(false) => {
            let path_rules = l
                .authorization
                .as_ref()
                .is_some_and(|a| a.rules.iter().any(|r| r.paths.is_some()));
            if path_rules {
                c.err(
                    format!("{key}.normalize_path"),
                    "authorization rules match paths, and without normalization `//admin` or \
                     `/x/../admin` would get past a rule on `/admin`",
                    "remove `normalize_path: false`, or the rules' `paths`",
                );
            }
            false
        }
        Some(true) => true,
        None => !outbound || l.authorization.is_some(),
    }
}

/// Checks `raw`, the policy at `key` (`listeners.NAME.authorization`).
pub(super) fn check_authorization(
    c: &mut Checker,
    key: &str,
    raw: &RawAuthorization,
    protocol: ListenerProtocol,
) -> Authorization {
    if protocol == ListenerProtocol::Tcp {
        // A tcp listener decides per connection: there is no method, path or header to match.
        for (i, r) in raw.rules.iter().enumerate() {
            for (field, set) in [
                ("methods", r.methods.is_some()),
                ("paths", r.paths.is_some()),
                ("headers", !r.headers.is_empty()),
            ] {
                if set {
                    c.err(
                        format!("{key}.rules[{i}].{field}"),
                        format!(
                            "a tcp listener authorizes whole connections: it has no {field} to match"
                        ),
                        format!(
                            "remove `{field}` (tcp rules match `identities` and `source_cidrs`), \
                             or use `protocol: http`"
                        ),
                    );
                }
            }
        }
    }
    if raw.rules.is_empty() {
        c.err(
            format!("{key}.rules"),
            "a policy without rules denies every request",
            "add rules, e.g. rules: [{ action: deny, paths: [\"/admin/*\"] }, { action: allow }]",
        );
    }
    let mut names = HashSet::new();
    let rules: Vec<AuthzRule> = raw
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rkey = format!("{key}.rules[{i}]");
            let rule = check_rule(c, &rkey, i, r);
            if rule.name == "default" {
                c.err(
                    format!("{rkey}.name"),
                    "`default` names the policy's default decision",
                    "choose another name",
                );
            } else if !names.insert(rule.name.clone()) {
                c.err(
                    format!("{rkey}.name"),
                    format!("rule name `{}` is used twice in this policy", rule.name),
                    "give each rule a unique name",
                );
            }
            rule
        })
        .collect();
    if !rules.is_empty() && rules.iter().all(|r| r.action == AuthzAction::Deny) {
        c.err(
            format!("{key}.rules"),
            "every rule denies, and a request no allow rule matches is denied: this policy \
             denies every request",
            "add an allow rule after the deny rules, e.g. `- { action: allow }` to allow the rest",
        );
    }
    Authorization { rules }
}

fn check_rule(c: &mut Checker, key: &str, index: usize, r: &RawAuthzRule) -> AuthzRule {
    let name = match &r.name {
        Some(n) => {
            super::check_name(c, &format!("{key}.name"), n);
            n.clone()
        }
        None => format!("rules[{index}]"),
    };
    let identities = list(
        c,
        key,
        "identities",
        r.identities.as_deref(),
        identity_match,
    );
    let source_cidrs = list(c, key, "source_cidrs", r.source_cidrs.as_deref(), |s| {
        s.trim()
            .parse::<Cidr>()
            .map_err(|e| format!("{e}; use 10.0.0.0/8, 192.0.2.7 or ::1/128"))
    });
    let methods = list(c, key, "methods", r.methods.as_deref(), |s| {
        let up = s.trim().to_ascii_uppercase();
        match Method::from_bytes(up.as_bytes()) {
            Ok(m) if !up.is_empty() => Ok(m),
            _ => Err("use GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, ...".into()),
        }
    });
    let paths = list(c, key, "paths", r.paths.as_deref(), path_pattern);
    let mut headers = Vec::with_capacity(r.headers.len());
    for (name, value) in &r.headers {
        let hkey = format!("{key}.headers.{name}");
        match (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => c.err(
                &hkey,
                format!("`{name}` is not a valid header name"),
                "use letters, digits and '-', e.g. x-tenant",
            ),
            (_, Err(_)) => c.err(
                &hkey,
                "the value has characters not allowed in a header",
                "use visible ASCII characters",
            ),
        }
    }
    AuthzRule {
        name,
        action: match r.action {
            RawAuthzAction::Allow => AuthzAction::Allow,
            RawAuthzAction::Deny => AuthzAction::Deny,
        },
        identities,
        source_cidrs,
        methods,
        paths,
        headers,
    }
}

/// Parses each entry of an optional list; an empty list is refused (it reads as "nothing" but
/// would mean "no condition").
/// Parses an identity pattern: exact, a prefix ending in `*`, or `*`. The error is a hint.
pub(super) fn identity_match(s: &str) -> Result<IdentityMatch, String> {
    let s = s.trim();
    match s {
        "" => Err(
            "use an identity like spiffe://prod/ns/shop/sa/cart, a prefix ending in *, or *".into(),
        ),
        "*" => Ok(IdentityMatch::Any),
        _ => match s.strip_suffix('*') {
            Some(p) if p.contains('*') => Err("`*` may only end the pattern".into()),
            Some(p) => Ok(IdentityMatch::Prefix(p.to_owned())),
            None if s.contains('*') => Err("`*` may only end the pattern".into()),
            None => Ok(IdentityMatch::Exact(s.to_owned())),
        },
    }
}

/// Parses `raw` at `key.field` as a list, each entry with `parse` (whose error is a hint).
pub(super) fn list<T>(
    c: &mut Checker,
    key: &str,
    field: &str,
    raw: Option<&[String]>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let Some(raw) = raw else { return Vec::new() };
    if raw.is_empty() {
        c.err(
            format!("{key}.{field}"),
            format!("the `{field}` list is empty"),
            format!("remove `{field}` to match any, or list some entries"),
        );
    }
    raw.iter()
        .enumerate()
        .filter_map(|(i, s)| match parse(s) {
            Ok(v) => Some(v),
            Err(hint) => {
                c.err(
                    format!("{key}.{field}[{i}]"),
                    format!("`{s}` is not valid here"),
                    hint,
                );
                None
            }
        })
        .collect()
}

/// `/exact`, `/segment/*` or `/prefix*`, in normal form (rules match normalized paths, so a
/// pattern that is not normal could never match).
fn path_pattern(s: &str) -> Result<AuthzPath, String> {
    let s = s.trim();
    if !s.starts_with('/') {
        return Err(format!(
            "paths start with '/': write \"/{}\"",
            s.trim_start_matches('/')
        ));
    }
    let (body, pattern) = if s == "/*" {
        ("", AuthzPath::Segments(String::new()))
    } else if let Some(b) = s.strip_suffix("/*") {
        (b, AuthzPath::Segments(b.to_owned()))
    } else if let Some(b) = s.strip_suffix('*') {
        (b, AuthzPath::Prefix(b.to_owned()))
    } else {
        (s, AuthzPath::Exact(s.to_owned()))
    };
    if body.contains('*') {
        return Err("`*` may only end the pattern: /admin/* or /admin*".into());
    }
    if body.contains(['?', '#']) {
        return Err("paths are matched without query or fragment; remove '?' and '#'".into());
    }
    let segments: Vec<&str> = body.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let dotted = segments
        .iter()
        .enumerate()
        .any(|(i, seg)| *seg == "." || *seg == ".." || (seg.is_empty() && i != last));
    if dotted {
        return Err(
            "request paths are normalized (no '//', '.' or '..' segments), so this could never \
             match; write the normalized path"
                .into(),
        );
    }
    if has_decodable_escape(body) {
        return Err(
            "request paths are normalized: escapes of letters, digits and -._~ are decoded and \
             the others upper-cased (%2F); write the path that way"
                .into(),
        );
    }
    Ok(pattern)
}

/// Whether `s` has a `%XX` that normalization would change (an unreserved character, or
/// lower-case hex), or a `%` that is not an escape.
fn has_decodable_escape(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let pair = b.get(i + 1..i + 3);
            let Some(&[h, l]) = pair else { return true };
            let (Some(hv), Some(lv)) = (char::from(h).to_digit(16), char::from(l).to_digit(16))
            else {
                return true;
            };
            let v = (hv << 4 | lv) as u8;
            if v.is_ascii_alphanumeric()
                || matches!(v, b'-' | b'.' | b'_' | b'~')
                || h.is_ascii_lowercase()
                || l.is_ascii_lowercase()
            {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

/// Checks `raw`, the section at `key` (`listeners.NAME.routes[N].jwt`).
pub(super) fn check_jwt(c: &mut Checker, key: &str, raw: &RawJwt) -> Jwt {
    if raw.issuer.trim().is_empty() {
        c.err(
            format!("{key}.issuer"),
            "the issuer is empty",
            "use your identity provider's issuer, e.g. https://auth.example.com/",
        );
    }
    if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.trim().is_empty()) {
        c.err(
            format!("{key}.audiences"),
            "list at least one audience, none empty",
            "use the audience your tokens are issued for, e.g. [orders-api]",
        );
    }
    // A mistyped algorithm must not also be reported as a jwks/secret mismatch.
    let mut typo = false;
    let algorithms = match &raw.algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(list) => {
            if list.is_empty() {
                c.err(
                    format!("{key}.algorithms"),
                    "the algorithm list is empty, so no token could pass",
                    "remove `algorithms` for [RS256, ES256, EdDSA], or list some",
                );
            }
            let mut out = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let akey = format!("{key}.algorithms[{i}]");
                match JwtAlgorithm::ALL.iter().find(|x| x.as_str() == a.trim()) {
                    Some(alg) if !out.contains(alg) => out.push(*alg),
                    Some(_) => c.err(
                        akey,
                        format!("`{a}` is listed twice"),
                        "remove the duplicate",
                    ),
                    None => {
                        typo = true;
                        let names = JwtAlgorithm::ALL.map(JwtAlgorithm::as_str);
                        let hint = if a.trim().eq_ignore_ascii_case("none") {
                            "unsigned tokens (`alg: none`) are never accepted".to_owned()
                        } else {
                            let suggestion = closest(a.trim(), names.iter().copied())
                                .map(|s| format!("did you mean \"{s}\"? "))
                                .unwrap_or_default();
                            format!("{suggestion}use one of: {}", names.join(", "))
                        };
                        c.err(akey, format!("`{a}` is not a supported algorithm"), hint);
                    }
                }
            }
            out
        }
    };
    let hs256 = algorithms.contains(&JwtAlgorithm::HS256);
    let secret = raw.hs256_secret_file.as_deref().map(str::trim);
    match (hs256, secret) {
        (true, None) => c.err(
            format!("{key}.algorithms"),
            "HS256 needs a shared secret",
            "add `hs256_secret_file: /path/to/secret`, or remove HS256",
        ),
        (false, Some(_)) if !typo => c.err(
            format!("{key}.hs256_secret_file"),
            "HS256 is not in `algorithms`, so the secret would never be used",
            "add HS256 to `algorithms` explicitly, or remove `hs256_secret_file`",
        ),
        (_, Some("")) => c.err(
            format!("{key}.hs256_secret_file"),
            "the path is empty",
            "name the file holding the secret",
        ),
        _ => {}
    }
    let asymmetric = algorithms.iter().any(|a| *a != JwtAlgorithm::HS256);
    let jwks = match (&raw.jwks, asymmetric) {
        (Some(j), true) => Some(check_jwks(c, &format!("{key}.jwks"), j)),
        (None, true) => {
            c.err(
                format!("{key}.jwks"),
                "asymmetric algorithms need public keys",
                "add `jwks: { url: https://... }` or `jwks: { file: /path/jwks.json }`",
            );
            None
        }
        (Some(j), false) if typo => Some(check_jwks(c, &format!("{key}.jwks"), j)),
        (Some(_), false) => {
            c.err(
                format!("{key}.jwks"),
                "only HS256 is accepted, so the key set would never be used",
                "remove `jwks`, or add the algorithms its keys use to `algorithms`",
            );
            None
        }
        (None, false) => None,
    };
    let leeway = match raw.leeway.as_deref().map(str::trim) {
        Some(l) if humantime::parse_duration(l).is_ok_and(|d| d.is_zero()) => Duration::ZERO,
        l => c.duration(&format!("{key}.leeway"), l, Duration::from_secs(60)),
    };
    let mut forward_claims = Vec::with_capacity(raw.forward_claims.len());
    let mut headers = HashSet::new();
    for (claim, header) in &raw.forward_claims {
        let ckey = format!("{key}.forward_claims.{claim}");
        let h = header.trim().to_ascii_lowercase();
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if is_reserved(&n) => c.err(
                &ckey,
                format!("`{header}` is a header Tandem or HTTP itself manages"),
                "use an application header, e.g. x-user",
            ),
            Ok(_) if !headers.insert(h.clone()) => c.err(
                &ckey,
                format!("header `{header}` receives two claims"),
                "give each claim its own header",
            ),
            Ok(_) => forward_claims.push((claim.clone(), h)),
            Err(_) => c.err(
                &ckey,
                format!("`{header}` is not a header name"),
                "use letters, digits and '-', e.g. x-user",
            ),
        }
    }
    Jwt {
        issuer: raw.issuer.clone(),
        audiences: raw.audiences.clone(),
        jwks,
        algorithms,
        leeway,
        forward_claims,
        hs256_secret_file: secret.filter(|s| !s.is_empty()).map(PathBuf::from),
    }
}

/// Headers a claim may not be written to: framing, routing and the token itself.
fn is_reserved(n: &HeaderName) -> bool {
    use http::header::*;
    [
        AUTHORIZATION,
        HOST,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        TE,
        UPGRADE,
        FORWARDED,
    ]
    .contains(n)
        || n.as_str().starts_with("tandem-")
        || n.as_str() == "x-forwarded-for"
        || n.as_str() == "x-forwarded-proto"
}

fn check_jwks(c: &mut Checker, key: &str, raw: &RawJwks) -> Jwks {
    let source = match (raw.file.as_deref(), raw.url.as_deref()) {
        (Some(f), None) if !f.trim().is_empty() => JwksSource::File(PathBuf::from(f.trim())),
        (None, Some(u)) => {
            let u = u.trim();
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            match rest {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
                    JwksSource::Url(u.to_owned())
                }
                _ => {
                    c.err(
                        format!("{key}.url"),
                        format!("`{u}` is not an http:// or https:// URL with a host"),
                        "use e.g. https://idp.example.com/.well-known/jwks.json",
                    );
                    JwksSource::Url(u.to_owned())
                }
            }
        }
        (Some(_), Some(_)) => {
            c.err(
                key,
                "both `file` and `url` are set",
                "keep one: { url: http://... } or { file: /path/jwks.json }",
            );
            JwksSource::File(PathBuf::new())
        }
        _ => {
            c.err(
                key,
                "neither `file` nor `url` is set",
                "use { url: http://HOST/.well-known/jwks.json } or { file: /path/jwks.json }",
            );
            JwksSource::File(PathBuf::new())
        }
    };
    let ca = raw.ca.as_deref().map(str::trim).map(PathBuf::from);
    if ca.is_some() && !matches!(&source, JwksSource::Url(u) if u.starts_with("https://")) {
        c.err(
            format!("{key}.ca"),
            "`ca` only applies to an https:// JWKS URL",
            "remove `ca`, or serve the JWKS over https",
        );
    }
    if ca.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        c.err(
            format!("{key}.ca"),
            "`ca` is empty",
            "name a PEM file of CA certificates, or remove `ca` to use the system's trust store",
        );
    }
    Jwks {
        source,
        ca,
        refresh: c.duration(
            &format!("{key}.refresh"),
            raw.refresh.as_deref(),
            Duration::from_secs(300),
        ),
        min_refresh_interval: c.duration(
            &format!("{key}.min_refresh_interval"),
            raw.min_refresh_interval.as_deref(),
            Duration::from_secs(10),
        ),
    }
}
