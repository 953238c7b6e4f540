//! Per-request signing through the bridge: the `sign-request` connection operation, called
//! inline on the caller's thread (a runtime worker) for connections whose scheme declares
//! `{"signs_requests": true}`.
//!
//! Why inline rather than on `spawn_blocking` like every other plugin call: signing is
//! computation (a hash and an HMAC or signature, microseconds), and a hand-off to a blocking
//! thread and back would cost more than the signing on every request. Plugins must still never
//! block a runtime thread, so a signing call gets [`InlineServices`]: the clock, the
//! environment, logging and `redact-secret` answer as usual; everything that could block (HTTP,
//! files, sleeping, the person, the credential store, `exec`, `browser-redirect`) answers an
//! error instead. A scheme fetches what it needs in `authorize`, which runs on a blocking
//! thread, and signs with it.

use super::host_services::CallServices;
use super::{CallError, PluginConnection};
use crate::text::plugin_text;
use fhirconn_abi::{
    host_ref,
    std_types::{ROption, RResult, RStr, RString, RVec},
    AbiError, ErrorKind as AbiKind, HostServices, HttpRequest, HttpResponse,
};
use fhirconn_sdk::wire::{HostOperation, SignAnswer, SignRequest, WireHeader, SIGN_REQUEST};
use fhirconn_sdk::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The host services of a `sign-request` call: only what cannot block.
pub(crate) struct InlineServices(pub(crate) CallServices);

fn refused<T>(what: &str) -> RResult<T, AbiError> {
    RResult::RErr(AbiError::new(
        AbiKind::UNSUPPORTED,
        format!(
            "{what} is not available while signing a request (sign-request runs inline: \
             fetch what it needs in authorize)"
        ),
    ))
}

impl HostServices for InlineServices {
    fn http(&self, _request: HttpRequest) -> RResult<HttpResponse, AbiError> {
        refused("http")
    }
    fn read_file(&self, _path: RStr<'_>) -> RResult<RVec<u8>, AbiError> {
        refused("read_file")
    }
    fn env_var(&self, name: RStr<'_>) -> ROption<RString> {
        self.0.env_var(name)
    }
    fn now_unix_ms(&self) -> i64 {
        self.0.now_unix_ms()
    }
    fn sleep_ms(&self, _millis: u64) {}
    fn log(&self, level: u32, message: RStr<'_>) {
        self.0.log(level, message)
    }
    fn tell_person(&self, _message: RStr<'_>, _url: ROption<RStr<'_>>) -> bool {
        false
    }
    fn store_get(&self, _key: RStr<'_>) -> RResult<ROption<RString>, AbiError> {
        refused("store_get")
    }
    fn store_put(&self, _key: RStr<'_>, _value: RStr<'_>) -> RResult<(), AbiError> {
        refused("store_put")
    }
    fn store_delete(&self, _key: RStr<'_>) -> RResult<(), AbiError> {
        refused("store_delete")
    }
    fn invoke(&self, op: RStr<'_>, payload_json: RStr<'_>) -> RResult<RString, AbiError> {
        match HostOperation::parse(op.as_str(), payload_json.as_str()) {
            Ok(HostOperation::RedactSecret(_)) => self.0.invoke(op, payload_json),
            Ok(HostOperation::Unknown(other)) => RResult::RErr(AbiError::new(
                AbiKind::UNSUPPORTED,
                format!("host operation '{other}' is not supported"),
            )),
            Ok(known) => refused(&format!("host operation '{}'", known.name())),
            Err(e) => RResult::RErr(AbiError::new(AbiKind::INTERNAL, e.to_string())),
        }
    }
}

impl PluginConnection {
    /// Runs `sign-request` on this thread (see the module documentation) and reads the
    /// answer; sensitive values are registered with the redactor before anyone can print them.
    pub(crate) fn sign_inline(
        &self,
        request: &SignRequest,
        services: &InlineServices,
    ) -> Result<SignAnswer, CallError> {
        let redactor = &services.0.shared.redactor;
        let failed = |kind: ErrorKind, message: &str| CallError::Failed {
            scheme: self.scheme.clone(),
            kind,
            message: plugin_text(&redactor.redact(message)),
        };
        let payload = serde_json::to_string(request)
            .map_err(|e| failed(ErrorKind::Internal, &format!("sign-request payload: {e}")))?;
        let imp = &self.imp;
        // The plugin's entry points catch their own panics; this guard is for a panic in the
        // ABI glue itself, so that it never unwinds through the runtime's worker.
        let answer = catch_unwind(AssertUnwindSafe(|| {
            imp.invoke(
                SIGN_REQUEST.into(),
                payload.as_str().into(),
                host_ref(services),
            )
        }))
        .map_err(|_| failed(ErrorKind::Internal, "sign-request panicked"))?
        .into_result()
        .map_err(|e| failed(ErrorKind::from_abi(e.kind), e.message.as_str()))?;
        let answer: SignAnswer = serde_json::from_str(answer.as_str()).map_err(|e| {
            failed(
                ErrorKind::Protocol,
                &format!("sign-request answered malformed JSON: {e}"),
            )
        })?;
        for WireHeader {
            value, sensitive, ..
        } in &answer.headers
        {
            if *sensitive {
                redactor.add_transient(value);
            }
        }
        Ok(answer)
    }
}
