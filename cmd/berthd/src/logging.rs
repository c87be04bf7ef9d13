//! berthd's tracing subscriber: a `RUST_LOG`-syntax filter and a text or JSON format, on stderr
//! (journald under systemd; stdout stays free for `berthd config`).

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Which filter applies: the `--log-level` flag, else `RUST_LOG`, else the config's `log_level`.
/// A bad filter is an error naming where it came from, not a silent fallback to defaults.
pub fn filter(flag: Option<&str>, env: Option<&str>, config: &str) -> anyhow::Result<EnvFilter> {
    let (text, from) = match (flag, env) {
        (Some(f), _) => (f, "--log-level"),
        (None, Some(e)) if !e.is_empty() => (e, "RUST_LOG"),
        _ => (config, "log_level"),
    };
    EnvFilter::try_new(text).with_context(|| format!("{from} {text:?}"))
}

pub fn init(format: LogFormat, filter: EnvFilter) {
    use std::io::IsTerminal;
    // No colour codes in journald or a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Flattened: `message` and the event's fields sit at the top level next to `level`,
        // `target` and `timestamp`, where collectors (fluent-bit, vector) look for them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_beats_rust_log_which_beats_the_config() {
        let f = filter(Some("debug"), Some("warn"), "info").unwrap();
        assert_eq!(f.to_string(), "debug");
        let f = filter(None, Some("berth_image=trace"), "info").unwrap();
        assert_eq!(f.to_string(), "berth_image=trace");
        let f = filter(None, Some(""), "h2=warn").unwrap();
        assert_eq!(f.to_string(), "h2=warn");
        let e = filter(None, None, "info,berth=loud").unwrap_err();
        assert!(format!("{e:#}").contains("log_level"), "{e:#}");
        let e = filter(Some("=="), None, "info").unwrap_err();
        assert!(format!("{e:#}").contains("--log-level"), "{e:#}");
    }
}
