//! The fake panels of a load test: their description (a small text format for
//! files and flags), starting them in this process, and the `panels` command.

use std::fmt;
use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fakepanel::{FakePanel, Kind, Latency, Mode, PanelConfig};
use serde::{Deserialize, Serialize};

/// One fake panel as described by a line such as
/// `marzneshin latency=20ms..80ms fail=0.01 configs=3`.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelSpec {
    pub kind: Kind,
    /// None answers at once.
    pub latency: Option<Latency>,
    /// Probability that an answer is HTTP 500.
    pub failure_rate: f64,
    /// Config links each user gets from this panel.
    pub configs: usize,
}

/// The panel type as the `panels.panel_type` column spells it.
pub fn panel_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Marzneshin => "marzneshin",
        Kind::Marzban => "marzban",
        Kind::Xui => "sanaei",
    }
}

fn parse_kind(word: &str) -> Result<Kind> {
    Ok(match word.to_ascii_lowercase().as_str() {
        "marzneshin" => Kind::Marzneshin,
        "marzban" => Kind::Marzban,
        "3x-ui" | "xui" | "sanaei" => Kind::Xui,
        other => bail!("unknown panel kind {other:?} (marzneshin, marzban or 3x-ui)"),
    })
}

/// Parses `50ms`, `1.5s` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if text == "0" {
        ("0", 1.0)
    } else {
        bail!("duration {text:?} needs a unit: ms or s");
    };
    let value: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("duration {text:?} is not a number"))?;
    if !(0.0..=3600.0).contains(&(value * scale)) {
        bail!("duration {text:?} is out of range");
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Parses a latency: `50ms` (fixed) or `20ms..80ms` (uniform); `0` is none.
pub fn parse_latency(text: &str) -> Result<Option<Latency>> {
    let latency = match text.split_once("..") {
        Some((min, max)) => {
            let (min, max) = (parse_duration(min)?, parse_duration(max)?);
            if max < min {
                bail!("latency range {text:?} ends before it starts");
            }
            Latency::Uniform { min, max }
        }
        None => Latency::Fixed(parse_duration(text)?),
    };
    Ok(match latency {
        Latency::Fixed(d) if d.is_zero() => None,
        other => Some(other),
    })
}

/// Formats a latency the way [`parse_latency`] reads it.
pub fn latency_label(latency: Option<Latency>) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    match latency {
        None => "0ms".to_owned(),
        Some(Latency::Fixed(d)) => ms(d),
        Some(Latency::Uniform { min, max }) => format!("{}..{}", ms(min), ms(max)),
    }
}

impl PanelSpec {
    /// Parses one line; words after the kind are `key=value`.
    pub fn parse(line: &str) -> Result<PanelSpec> {
        let mut words = line.split_whitespace();
        let kind = parse_kind(words.next().context("empty panel description")?)?;
        let mut spec = PanelSpec {
            kind,
            latency: None,
            failure_rate: 0.0,
            configs: 2,
        };
        for word in words {
            let (key, value) = word
                .split_once('=')
                .with_context(|| format!("panel option {word:?} is not key=value"))?;
            match key {
                "latency" => spec.latency = parse_latency(value)?,
                "fail" => {
                    let rate: f64 = value
                        .parse()
                        .with_context(|| format!("fail={value:?} is not a number"))?;
                    if !(0.0..=1.0).contains(&rate) {
                        bail!("fail={value} must be between 0 and 1");
                    }
                    spec.failure_rate = rate;
                }
                "configs" => {
                    spec.configs = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=50).contains(n))
                        .with_context(|| format!("configs={value:?} must be 1 to 50"))?;
                }
                other => bail!("unknown panel option {other:?} (latency, fail, configs)"),
            }
        }
        Ok(spec)
    }

    /// Parses a file: one panel per line, `#` starts a comment.
    pub fn parse_file(text: &str) -> Result<Vec<PanelSpec>> {
        let mut specs = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            specs.push(PanelSpec::parse(line).with_context(|| format!("line {}", number + 1))?);
        }
        if specs.is_empty() {
            bail!("no panel described");
        }
        Ok(specs)
    }

    /// The mode that applies this description's latency.
    pub fn mode(&self) -> Mode {
        match self.latency {
            Some(latency) => Mode::Latency(latency),
            None => Mode::Normal,
        }
    }
}

impl fmt::Display for PanelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} latency={} fail={} configs={}",
            panel_type(self.kind),
            latency_label(self.latency),
            self.failure_rate,
            self.configs
        )
    }
}

/// The panels the sweep and the demo use when none are described: two
/// Marzneshin and one Marzban (the common mix), one 3x-ui.
pub fn default_specs() -> Vec<PanelSpec> {
    ["marzneshin", "marzneshin", "marzban", "3x-ui"]
        .iter()
        .map(|kind| PanelSpec::parse(kind).expect("built-in panel description"))
        .collect()
}

/// Number of 3x-ui clients each 3x-ui fake holds; users share them (user i
/// is client `c{i % XUI_CLIENTS}`), as a real 3x-ui panel lists every client
/// in one answer and a list of 100,000 would measure only JSON parsing.
pub const XUI_CLIENTS: usize = 200;

/// The 3x-ui client a user is linked to.
pub fn xui_client(user_index: u64) -> String {
    format!("c{}", user_index % XUI_CLIENTS as u64)
}

/// The display name of panel `index`'s config `number` (1-based).
pub fn config_name(index: usize, number: usize) -> String {
    format!("p{index}-cfg{number}")
}

/// The config links every user gets from a Marzneshin or Marzban panel.
fn catch_all_links(index: usize, configs: usize) -> Vec<String> {
    (1..=configs)
        .map(|number| {
            format!(
                "vless://5b0c6d1e-0000-4000-8000-{index:06}{number:06}@p{index}.vpn.example:443\
                 ?security=tls&type=ws&path=%2Fws#{}",
                config_name(index, number)
            )
        })
        .collect()
}

/// A panel as the seeder and the report need it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PanelInfo {
    pub index: usize,
    pub panel_type: String,
    pub url: String,
    pub token: String,
    pub configs: usize,
}

/// Running fake panels, in the order of their descriptions.
pub struct PanelSet {
    pub specs: Vec<PanelSpec>,
    pub panels: Vec<FakePanel>,
}

impl PanelSet {
    /// Starts one fake per description on loopback.
    pub fn start(specs: &[PanelSpec]) -> PanelSet {
        let mut panels = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let config = PanelConfig {
                catch_all_links: Some(catch_all_links(index, spec.configs)),
                // The load test sends millions of calls; the log is for tests.
                max_logged_calls: Some(0),
                ..PanelConfig::default()
            };
            let panel = FakePanel::start(spec.kind, config);
            if spec.kind == Kind::Xui {
                // The fake starts with two inbounds; more inbounds mean more
                // configs per client.
                for extra in 2..spec.configs {
                    panel.add_inbound(serde_json::json!({
                        "remark": config_name(index, extra + 1), "enable": true,
                        "listen": "", "port": 21000 + extra, "protocol": "vless",
                        "settings": {"clients": [], "decryption": "none"},
                        "streamSettings": {"network": "tcp", "security": "none"},
                    }));
                }
                for client in 0..XUI_CLIENTS {
                    panel.add_user(&xui_client(client as u64), Vec::new());
                }
            }
            panel.set_mode(spec.mode());
            panel.set_failure_rate(spec.failure_rate);
            panels.push(panel);
        }
        PanelSet {
            specs: specs.to_vec(),
            panels,
        }
    }

    pub fn infos(&self) -> Vec<PanelInfo> {
        self.panels
            .iter()
            .zip(&self.specs)
            .enumerate()
            .map(|(index, (panel, spec))| PanelInfo {
                index,
                panel_type: panel_type(spec.kind).to_owned(),
                url: panel.url(),
                token: panel.token(),
                configs: spec.configs,
            })
            .collect()
    }

    /// Gives every panel the same latency from now on.
    pub fn set_latency(&self, latency: Option<Latency>) {
        for panel in &self.panels {
            panel.set_mode(match latency {
                Some(latency) => Mode::Latency(latency),
                None => Mode::Normal,
            });
        }
    }

    /// Requests all panels received so far.
    pub fn call_count(&self) -> u64 {
        self.panels.iter().map(FakePanel::call_count).sum()
    }
}

/// `valhalla-loadtest panels`: serves the panels, prints them as one JSON
/// line, and obeys commands on standard input until it closes:
/// `latency <latency>` sets every panel's latency, `calls` prints the call
/// count. The sweep drives its panels this way so that their CPU time is
/// measured apart from the load generator's.
pub fn serve(specs: &[PanelSpec], info_file: Option<&std::path::Path>) -> Result<()> {
    let set = PanelSet::start(specs);
    let infos = set.infos();
    let line = serde_json::to_string(&infos)?;
    if let Some(path) = info_file {
        std::fs::write(path, format!("{line}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let stdout = std::io::stdout();
    writeln!(stdout.lock(), "{line}")?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading commands from standard input")?;
        let reply = match line.split_once(' ').unwrap_or((line.trim(), "")) {
            ("latency", value) => match parse_latency(value) {
                Ok(latency) => {
                    set.set_latency(latency);
                    "ok".to_owned()
                }
                Err(error) => format!("error {error:#}"),
            },
            ("calls", _) => format!("calls {}", set.call_count()),
            ("", _) => continue,
            (other, _) => format!("error unknown command {other:?}"),
        };
        writeln!(stdout.lock(), "{reply}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panel_line_sets_kind_latency_failures_and_configs() {
        let spec = PanelSpec::parse("marzban latency=20ms..80ms fail=0.05 configs=4").unwrap();
        assert_eq!(spec.kind, Kind::Marzban);
        assert_eq!(
            spec.latency,
            Some(Latency::Uniform {
                min: Duration::from_millis(20),
                max: Duration::from_millis(80)
            })
        );
        assert_eq!(spec.failure_rate, 0.05);
        assert_eq!(spec.configs, 4);
        assert_eq!(PanelSpec::parse("3x-ui").unwrap().kind, Kind::Xui);
        assert_eq!(PanelSpec::parse("sanaei latency=0").unwrap().latency, None);
    }

    #[test]
    fn bad_panel_lines_name_the_problem() {
        let error = |line: &str| format!("{:#}", PanelSpec::parse(line).unwrap_err());
        assert!(error("hiddify").contains("unknown panel kind"));
        assert!(error("marzban fail=2").contains("between 0 and 1"));
        assert!(error("marzban latency=50").contains("needs a unit"));
        assert!(error("marzban latency=80ms..20ms").contains("ends before"));
        assert!(error("marzban speed=1").contains("unknown panel option"));
    }

    #[test]
    fn a_file_skips_comments_and_blank_lines() {
        let specs =
            PanelSpec::parse_file("# two panels\nmarzneshin configs=3\n\n3x-ui # slow\n").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].configs, 3);
        let error = PanelSpec::parse_file("marzban\nnope\n").unwrap_err();
        assert!(format!("{error:#}").contains("line 2"));
    }

    #[test]
    fn latency_labels_read_back() {
        for text in ["0ms", "50ms", "20ms..80ms"] {
            let latency = parse_latency(text).unwrap();
            assert_eq!(latency_label(latency), text);
        }
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn started_panels_serve_the_described_configs() {
        let specs = PanelSpec::parse_file("marzneshin configs=3\n3x-ui configs=3\n").unwrap();
        let set = PanelSet::start(&specs);
        let infos = set.infos();
        assert_eq!(infos[0].panel_type, "marzneshin");
        assert_eq!(infos[1].panel_type, "sanaei");
        assert!(infos[0].url.starts_with("http://127.0.0.1:"));
        // The 3x-ui fake got one inbound beyond its two, each with every client.
        let inbounds = set.panels[1].inbounds();
        assert_eq!(inbounds.len(), 3);
        let settings: serde_json::Value =
            serde_json::from_str(inbounds[2]["settings"].as_str().unwrap()).unwrap();
        assert_eq!(settings["clients"].as_array().unwrap().len(), XUI_CLIENTS);
        assert_eq!(catch_all_links(0, 3).len(), 3);
        assert!(catch_all_links(0, 3)[2].ends_with("#p0-cfg3"));
    }
}
