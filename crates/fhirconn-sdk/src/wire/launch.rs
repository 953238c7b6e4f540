//! SMART App Launch context (SMART App Launch 2.x §"Launch context arrives with your
//! access_token"): what a token response says about the launch, carried from a scheme to the
//! host in `CredentialsExtensions.context` so `fhirconn test` and `fhirconn token --json` can
//! show it. Every value is server text: the host sanitises it before it reaches a terminal.

use serde::{Deserialize, Serialize};

/// The launch context of a SMART token response: `{"patient", "encounter", "fhirUser",
/// "scope", "need_patient_banner", "smart_style_url"}`, each optional, named as in the token
/// response. Values of another JSON type than documented are dropped by
/// [`LaunchContext::from_token_response`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchContext {
    /// `patient`: the id of the patient in context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// `encounter`: the id of the encounter in context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// `fhirUser`: the signed-in user's resource URL (e.g. `Practitioner/123`).
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// `scope`: the scopes granted (may be fewer than asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `need_patient_banner`: whether the app must show the patient's banner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    /// `smart_style_url`: the EHR's style sheet for apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_style_url: Option<String>,
}

impl LaunchContext {
    /// Reads the context fields of a token response body; `None` when it has none. `fhirUser`
    /// may also come from an `id_token` the scheme decoded: pass that as `fhir_user`.
    pub fn from_token_response(body: &serde_json::Value) -> Option<Self> {
        let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let ctx = Self {
            patient: text("patient"),
            encounter: text("encounter"),
            fhir_user: text("fhirUser"),
            scope: text("scope"),
            need_patient_banner: body.get("need_patient_banner").and_then(|v| v.as_bool()),
            smart_style_url: text("smart_style_url"),
        };
        (ctx != Self::default()).then_some(ctx)
    }

    /// Fills the fields `self` lacks from `older` (a refresh answer often repeats only some).
    #[must_use]
    pub fn or(self, older: Option<&Self>) -> Self {
        let Some(o) = older else { return self };
        Self {
            patient: self.patient.or_else(|| o.patient.clone()),
            encounter: self.encounter.or_else(|| o.encounter.clone()),
            fhir_user: self.fhir_user.or_else(|| o.fhir_user.clone()),
            scope: self.scope.or_else(|| o.scope.clone()),
            need_patient_banner: self.need_patient_banner.or(o.need_patient_banner),
            smart_style_url: self.smart_style_url.or_else(|| o.smart_style_url.clone()),
        }
    }

    /// Every text field through `f` (the host's sanitiser).
    #[must_use]
    pub fn map_text(self, f: impl Fn(&str) -> String) -> Self {
        let m = |v: Option<String>| v.map(|s| f(&s));
        Self {
            patient: m(self.patient),
            encounter: m(self.encounter),
            fhir_user: m(self.fhir_user),
            scope: m(self.scope),
            need_patient_banner: self.need_patient_banner,
            smart_style_url: m(self.smart_style_url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::CredentialsExtensions;
    use serde_json::{json, Value};

    #[test]
    fn launch_context_travels_as_the_documented_json() {
        let ctx = LaunchContext {
            patient: Some("123".into()),
            encounter: None,
            fhir_user: Some("Practitioner/9".into()),
            scope: Some("launch/patient patient/*.rs".into()),
            need_patient_banner: Some(true),
            smart_style_url: None,
        };
        let ext = CredentialsExtensions {
            context: Some(ctx.clone()),
            ..CredentialsExtensions::default()
        };
        let text = ext.to_json();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"context": {"patient": "123", "fhirUser": "Practitioner/9",
                   "scope": "launch/patient patient/*.rs", "need_patient_banner": true}})
        );
        assert_eq!(CredentialsExtensions::from_json(&text).unwrap(), ext);
        // Without a context (and warnings) the field stays empty, as ABI 1.0 plugins send it.
        assert_eq!(CredentialsExtensions::default().to_json(), "");
        assert_eq!(
            CredentialsExtensions::from_json(r#"{"warnings":["w"]}"#)
                .unwrap()
                .context,
            None
        );
    }

    #[test]
    fn a_token_response_yields_only_well_typed_context_fields() {
        let body = json!({"access_token": "t", "patient": "p1", "encounter": 7,
            "need_patient_banner": "yes", "smart_style_url": "https://ehr/style.json"});
        let ctx = LaunchContext::from_token_response(&body).unwrap();
        assert_eq!(ctx.patient.as_deref(), Some("p1"));
        assert_eq!(ctx.encounter, None);
        assert_eq!(ctx.need_patient_banner, None);
        assert_eq!(
            ctx.smart_style_url.as_deref(),
            Some("https://ehr/style.json")
        );
        assert_eq!(
            LaunchContext::from_token_response(&json!({"access_token": "t"})),
            None
        );
        let merged = LaunchContext {
            scope: Some("s2".into()),
            ..LaunchContext::default()
        }
        .or(Some(&ctx));
        assert_eq!(merged.patient.as_deref(), Some("p1"));
        assert_eq!(merged.scope.as_deref(), Some("s2"));
    }
}
