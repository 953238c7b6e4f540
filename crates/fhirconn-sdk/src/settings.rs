//! Declare a scheme's settings once: a serde struct is the parser, the documentation and (with
//! schemars) the JSON Schema at the same time.
//!
//! ```
//! use fhirconn_sdk::settings::{self, SecretSetting};
//! use fhirconn_sdk::{schemars, serde, Host, Result};
//!
//! /// HTTP Basic authentication
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! #[serde(crate = "fhirconn_sdk::serde")]
//! #[serde(rename_all = "kebab-case", deny_unknown_fields)]
//! #[schemars(crate = "fhirconn_sdk::schemars")]
//! struct BasicSettings {
//!     /// user-id
//!     #[schemars(length(min = 1))]
//!     username: String,
//!     /// password
//!     password: SecretSetting,
//! }
//!
//! // In `Scheme::config_schema`:  settings::schema::<BasicSettings>()
//! // In `Scheme::configure`:      let s: BasicSettings = settings::parse(settings, host)?;
//! # fn configure(v: fhirconn_sdk::serde_json::Value, host: &Host<'_>) -> Result<()> {
//! #     let s: BasicSettings = settings::parse(v, host)?;
//! #     Ok(())
//! # }
//! ```
//!
//! (`crate = ...` lets a plugin derive through the SDK's re-exports, so it needs no `serde` or
//! `schemars` dependency of its own and their versions always match the SDK's.)
//!
//! # Secret settings
//! A field of type [`SecretSetting`] (or `Option<SecretSetting>` for an optional secret) named
//! `password` is written by the person as exactly one of `password` (inline), `password-file`
//! (relative to the configuration file) or `password-env` (an environment variable).
//!
//! - **Schema.** [`SecretSetting`]'s own schema carries a private marker. [`schema`] replaces
//!   every marked property `x` by the three properties `x`, `x-file`, `x-env` (non-empty
//!   strings, as [`SecretSource::schema_properties`] writes them): the inline `x` is marked
//!   `"writeOnly": true`, which is how the host learns what is secret (it masks such values
//!   and refuses them on the command line; it never guesses from key names), and all three
//!   carry `"x-secret-source": "inline" | "file" | "env"`. A path or a variable name is not a
//!   secret, so `x-file`/`x-env` are not `writeOnly`. It adds "exactly one of them" (required
//!   field) or "at most one" (optional field) to `allOf`.
//! - **Parsing.** serde's `flatten` does not work with `deny_unknown_fields`, so [`parse`]
//!   pre-processes the settings object: it rejects keys the schema does not list
//!   (`unknown setting 'k'`), then for each secret field picks the one source set (errors name
//!   the keys, never values), removes the three keys, reads the secret through the [`Host`]
//!   (file or environment), and puts back under `x` a *marker* `{"$fhirconn-secret-slot": n}`.
//!   The resolved secrets wait in a thread-local table for the duration of the call; the
//!   `Deserialize` impl of [`SecretSetting`] accepts only a marker and takes its secret from
//!   that table. So a secret read from a file never enters a plain JSON string, a person cannot
//!   forge a marker (the key it would sit under is always replaced), and deserializing a
//!   [`SecretSetting`] anywhere but inside [`parse`] fails.
//! - Secret fields are found among the struct's own (top-level) fields; a [`SecretSetting`]
//!   inside a nested struct is not supported (its parse fails with an error saying so).
//! - **Errors** name the setting (`username: invalid type: ...`, `'username' is required`),
//!   and quoted string values are withheld.

use crate::error::{Error, Result};
use crate::host::Host;
use crate::secret::{ExposeSecret, SecretSource, SecretString};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::cell::RefCell;

/// The schema keyword that marks a [`SecretSetting`] before [`schema`] expands it.
const MARK: &str = "x-fhirconn-secret";
/// The key of the marker object [`parse`] puts in place of a resolved secret.
const SLOT: &str = "$fhirconn-secret-slot";

thread_local! {
    /// Secrets resolved by the [`parse`] running on this thread, taken by their markers.
    static SLOTS: RefCell<Vec<Option<SecretSetting>>> = const { RefCell::new(Vec::new()) };
}

/// A secret setting, resolved from `x`, `x-file` or `x-env`. `Debug` shows which key was used,
/// never the value; read the value with [`ExposeSecret::expose_secret`] or [`Self::secret`].
pub struct SecretSetting {
    name: String,
    source: SecretSource,
    value: SecretString,
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSetting")
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

impl SecretSetting {
    /// The setting's name, e.g. `password`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key the person used: `password`, `password-file` or `password-env` (for messages).
    pub fn key(&self) -> String {
        match self.source {
            SecretSource::Inline(_) => self.name.clone(),
            SecretSource::File(_) => format!("{}-file", self.name),
            SecretSource::Env(_) => format!("{}-env", self.name),
        }
    }

    /// Where the secret came from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The secret as read when the settings were parsed.
    pub fn secret(&self) -> &SecretString {
        &self.value
    }

    /// The secret, consuming the setting.
    pub fn into_secret(self) -> SecretString {
        self.value
    }

    /// Reads the secret again (a file rotated on disk, a changed environment); an inline
    /// secret is returned as it is.
    pub fn reload(&self, host: &Host<'_>) -> Result<SecretString> {
        self.source.load(&self.name, host)
    }

    /// Turns an optional secret that this configuration needs into the same error a required
    /// one gives: `exactly one of 'x', 'x-file', 'x-env' must be set; none is`.
    pub fn require(setting: Option<Self>, name: &str) -> Result<Self> {
        setting.ok_or_else(|| {
            Error::config(format!(
                "exactly one of '{name}', '{name}-file', '{name}-env' must be set; none is"
            ))
        })
    }
}

impl ExposeSecret<str> for SecretSetting {
    fn expose_secret(&self) -> &str {
        self.value.expose_secret()
    }
}

impl JsonSchema for SecretSetting {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "SecretSetting".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({"type": "string", "minLength": 1, "writeOnly": true, MARK: true})
    }
}

impl<'de> serde::Deserialize<'de> for SecretSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Marker {
            #[serde(rename = "$fhirconn-secret-slot")]
            slot: usize,
        }
        let wrong = || {
            serde::de::Error::custom(
                "secret settings are read with fhirconn_sdk::settings::parse only",
            )
        };
        let marker = Marker::deserialize(d).map_err(|_| wrong())?;
        SLOTS
            .with(|s| s.borrow_mut().get_mut(marker.slot).and_then(Option::take))
            .ok_or_else(wrong)
    }
}

/// The JSON Schema of a settings struct, for [`crate::Scheme::config_schema`]: subschemas
/// inlined (it is embedded in the host's composed schema), no `$schema`/`title`, and every
/// [`SecretSetting`] expanded to `x` / `x-file` / `x-env` (see the module docs).
pub fn schema<T: JsonSchema>() -> Value {
    let mut root = generate::<T>();
    expand_secrets(&mut root);
    Value::Object(root)
}

/// The schema as schemars derives it, secrets still marked.
fn generate<T: JsonSchema>() -> Map<String, Value> {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.meta_schema = None;
            s.inline_subschemas = true;
        })
        .into_generator();
    match generator.into_root_schema_for::<T>().to_value() {
        Value::Object(mut root) => {
            root.remove("title");
            if let Some(Value::Object(props)) = root.get_mut("properties") {
                props.values_mut().for_each(forbid_null);
            }
            root
        }
        _ => Map::new(),
    }
}

/// schemars lets an `Option` field be `null`; a person leaves an optional setting out instead
/// (as the hand-written schemas said), so `key:` with no value stays an error. Removes `null`
/// from a property's `type` list or `anyOf` branches. [`schema`] applies it to every property;
/// the host's own derived settings schema can use it too.
pub fn forbid_null(property: &mut Value) {
    let Value::Object(p) = property else { return };
    if let Some(Value::Array(types)) = p.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            p.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any)) = p.get_mut("anyOf") {
        any.retain(|branch| branch.get("type").and_then(Value::as_str) != Some("null"));
        if let [only] = any.as_slice() {
            let only = only.clone();
            p.remove("anyOf");
            if let Value::Object(o) = only {
                p.extend(o);
            }
        }
    }
}

/// A secret field of a settings schema: its name and whether it is required.
struct SecretField {
    name: String,
    required: bool,
}

/// The marked properties of a generated (not yet expanded) schema.
fn secret_fields(root: &Map<String, Value>) -> Vec<SecretField> {
    let required: Vec<&str> = root
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    root.get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .filter(|(_, p)| p.get(MARK).is_some())
                .map(|(name, _)| SecretField {
                    name: name.clone(),
                    required: required.contains(&name.as_str()),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn expand_secrets(root: &mut Map<String, Value>) {
    let fields = secret_fields(root);
    let mut constraints = Vec::new();
    for field in &fields {
        let name = field.name.as_str();
        let Some(Value::Object(props)) = root.get_mut("properties") else {
            return;
        };
        let what = props
            .remove(name)
            .and_then(|p| p.get("description")?.as_str().map(String::from))
            .unwrap_or_else(|| name.to_string());
        props.extend(SecretSource::schema_properties(name, &what));
        let keys = [
            name.to_string(),
            format!("{name}-file"),
            format!("{name}-env"),
        ];
        constraints.push(if field.required {
            SecretSource::schema_exactly_one(name)
        } else {
            // At most one: one of the three, or none of them.
            let none = json!({"not": {"anyOf": keys.iter().map(|k| json!({"required": [k]}))
                .collect::<Vec<_>>()}});
            json!({"oneOf": keys.iter().map(|k| json!({"required": [k]}))
                .chain([none]).collect::<Vec<_>>()})
        });
        if let Some(Value::Array(req)) = root.get_mut("required") {
            req.retain(|r| r != name);
        }
    }
    if matches!(root.get("required"), Some(Value::Array(r)) if r.is_empty()) {
        root.remove("required");
    }
    if !constraints.is_empty() {
        if let Value::Array(all) = root.entry("allOf").or_insert_with(|| json!([])) {
            all.extend(constraints);
        }
    }
}

/// Restores the previous slot table when a [`parse`] ends (also by a panic).
struct SlotGuard(Vec<Option<SecretSetting>>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.0);
        SLOTS.with(|s| *s.borrow_mut() = previous);
    }
}

/// Parses a scheme's settings object into `T`, resolving its [`SecretSetting`]s through the
/// host (see the module docs). Every error is a configuration error that names the setting.
pub fn parse<T: DeserializeOwned + JsonSchema>(settings: Value, host: &Host<'_>) -> Result<T> {
    let Value::Object(mut map) = settings else {
        return Err(Error::config("settings must be an object"));
    };
    let raw = generate::<T>();
    let fields = secret_fields(&raw);
    let mut expanded = raw;
    expand_secrets(&mut expanded);
    let known = expanded.get("properties").and_then(Value::as_object);
    if let Some(key) = map
        .keys()
        .find(|k| known.is_some_and(|props| !props.contains_key(k.as_str())))
    {
        return Err(Error::config(format!("unknown setting '{key}'")));
    }
    // Pick every source first (no I/O), so "exactly one" errors come before file errors.
    let mut sources = Vec::new();
    for field in &fields {
        sources.push(SecretSource::from_settings(
            &map,
            &field.name,
            field.required,
        )?);
    }
    let mut slots = Vec::new();
    for (field, source) in fields.iter().zip(sources) {
        let name = field.name.as_str();
        for key in [
            name.to_string(),
            format!("{name}-file"),
            format!("{name}-env"),
        ] {
            map.remove(&key);
        }
        if let Some(source) = source {
            let value = source.load(name, host)?;
            map.insert(name.to_string(), json!({ SLOT: slots.len() }));
            slots.push(Some(SecretSetting {
                name: name.to_string(),
                source,
                value,
            }));
        }
    }
    let _guard = SlotGuard(SLOTS.with(|s| std::mem::replace(&mut *s.borrow_mut(), slots)));
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = redact_serde_message(e.inner());
        Error::config(describe(&path, &inner))
    })
}

/// serde messages may quote the offending value (`invalid value: string "..."`), which could be
/// a secret; keep only the part that names the problem.
fn redact_serde_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.find(": string \"").or_else(|| msg.find(" string \"")) {
        Some(idx) => format!("{} (value withheld)", &msg[..idx]),
        None => msg,
    }
}

/// Words a serde error for a person, naming the setting.
fn describe(path: &str, message: &str) -> String {
    let quoted = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        Some(rest[..rest.find('`')?].to_string())
    };
    if let Some(field) = quoted("missing field `") {
        return format!("'{field}' is required");
    }
    if let Some(field) = quoted("unknown field `") {
        return format!("unknown setting '{field}'");
    }
    if path.is_empty() || path == "." {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

#[cfg(test)]
mod tests;
