//! The link rules of a subscription: config names, their canonical form, cleaning, the per-panel filters and the merge.
//!
//! Everything here is a pure function over strings, called once per link on
//! the request path and measured by the criterion benches, so the functions
//! avoid the `regex` crate and allocate only for what they return.

use std::borrow::Cow;
use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use percent_encoding::percent_decode_str;

/// The schemes of config links a VPN client can import; anything else a panel
/// returns (comments, HTML, JSON fragments) is dropped.
const SCHEMES: [&str; 4] = ["vless", "vmess", "trojan", "ss"];

/// Longest canonical name, in characters: the width of
/// `panel_disabled_configs.config_name`.
const MAX_CANONICAL_CHARS: usize = 255;

/// The person emoji that panels put before the account's username in a
/// config name; it and everything after it are not part of the name.
const PERSON_EMOJI: char = '\u{1F464}';

/// The name of a config link: the URL-decoded text after `#`.
///
/// A vmess link carries its name as `ps` inside base64 JSON, which is what
/// clients show, so for vmess the `ps` field wins and the fragment is only a
/// fallback for links whose payload cannot be decoded. Returns `None` when
/// the link has no name or an empty one. Invalid UTF-8 in an escaped name is
/// replaced rather than rejected, as a name is only ever compared.
pub fn config_name(link: &str) -> Option<Cow<'_, str>> {
    let (body, fragment) = match link.split_once('#') {
        Some((body, fragment)) => (body, Some(fragment)),
        None => (link, None),
    };

    if let Some(payload) = strip_scheme(body, "vmess")
        && let Some(name) = vmess_name(payload)
    {
        return (!name.is_empty()).then_some(Cow::Owned(name));
    }

    let fragment = fragment.filter(|text| !text.is_empty())?;
    Some(percent_decode_str(fragment).decode_utf8_lossy())
}

/// The `ps` field of a vmess payload (base64 of JSON), when there is one.
fn vmess_name(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct VmessConfig {
        ps: Option<String>,
    }

    let payload = payload.trim();
    let json = STANDARD_PAD_INDIFFERENT
        .decode(payload)
        .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(payload))
        .ok()?;
    serde_json::from_slice::<VmessConfig>(&json).ok()?.ps
}

/// The text after `scheme://` when `link` starts with it, case-insensitively.
fn strip_scheme<'a>(link: &'a str, scheme: &str) -> Option<&'a str> {
    let head = link.get(..scheme.len())?;
    let rest = link[scheme.len()..].strip_prefix("://")?;
    head.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// The canonical form of a config name, the form stored in
/// `panel_disabled_configs`.
///
/// Panels decorate names with the account's live state, so the same config
/// shows a different name on every fetch; the canonical form drops those
/// parts: everything from the person emoji (U+1F464) on, a traffic figure
/// such as `1.5 GB / 10GB` (units B, KB, MB, GB, TB in any case, spaces
/// allowed around the numbers, units and slash), and parenthesised tokens of
/// three or more of `[A-Za-z0-9_-]` (usernames, ids). A removed part
/// separates the words around it like a space would. Runs of whitespace
/// become one space, the ends are trimmed and the result is cut to 255
/// characters.
pub fn canonical_name(name: &str) -> String {
    let name = match name.find(PERSON_EMOJI) {
        Some(cut) => &name[..cut],
        None => name,
    };

    let mut canonical = String::with_capacity(name.len());
    let mut pending_space = false;
    let mut n_chars = 0;
    let mut pos = 0;
    while let Some(ch) = name[pos..].chars().next() {
        if let Some(end) = traffic_end(name, pos).or_else(|| token_end(name, pos)) {
            pending_space = true;
            pos = end;
            continue;
        }
        pos += ch.len_utf8();

        if ch.is_whitespace() {
            pending_space = true;
            continue;
        }
        if n_chars == MAX_CANONICAL_CHARS {
            break;
        }
        if pending_space && !canonical.is_empty() {
            canonical.push(' ');
            n_chars += 1;
            if n_chars == MAX_CANONICAL_CHARS {
                break;
            }
        }
        pending_space = false;
        canonical.push(ch);
        n_chars += 1;
    }

    // A cut right after a separator would leave a trailing space.
    let trimmed_len = canonical.trim_end().len();
    canonical.truncate(trimmed_len);
    canonical
}

/// The end of a traffic figure (`1.5 GB / 10GB`) starting at `pos`.
fn traffic_end(text: &str, pos: usize) -> Option<usize> {
    let pos = amount_end(text, pos)?;
    let pos = skip_whitespace(text, pos);
    let pos = text[pos..].strip_prefix('/').map(|_| pos + 1)?;
    let pos = skip_whitespace(text, pos);
    amount_end(text, pos)
}

/// The end of a number followed by a byte unit, spaces allowed between.
fn amount_end(text: &str, pos: usize) -> Option<usize> {
    let pos = number_end(text, pos)?;
    let pos = skip_whitespace(text, pos);
    unit_end(text, pos)
}

/// The end of `digits` or `digits.digits` starting at `pos`.
fn number_end(text: &str, pos: usize) -> Option<usize> {
    let pos = digits_end(text, pos)?;
    match text[pos..].strip_prefix('.') {
        Some(_) => Some(digits_end(text, pos + 1).unwrap_or(pos)),
        None => Some(pos),
    }
}

/// The end of a non-empty run of digits starting at `pos`.
///
/// Persian and Arabic-Indic digits count too: the original matched `\d`,
/// which in Python covers every decimal digit.
fn digits_end(text: &str, pos: usize) -> Option<usize> {
    let run: usize = text[pos..]
        .chars()
        .take_while(|ch| {
            ch.is_ascii_digit() || matches!(ch, '\u{0660}'..='\u{0669}' | '\u{06F0}'..='\u{06F9}')
        })
        .map(char::len_utf8)
        .sum();
    (run > 0).then_some(pos + run)
}

/// The end of a byte unit (`B`, `KB`, `MB`, `GB`, `TB`, any case) at `pos`.
fn unit_end(text: &str, pos: usize) -> Option<usize> {
    let bytes = &text.as_bytes()[pos..];
    match bytes {
        [b'b' | b'B', ..] => Some(pos + 1),
        [
            b'k' | b'K' | b'm' | b'M' | b'g' | b'G' | b't' | b'T',
            b'b' | b'B',
            ..,
        ] => Some(pos + 2),
        _ => None,
    }
}

fn skip_whitespace(text: &str, pos: usize) -> usize {
    let run: usize = text[pos..]
        .chars()
        .take_while(|ch| ch.is_whitespace())
        .map(char::len_utf8)
        .sum();
    pos + run
}

/// The end of a parenthesised token of three or more of `[A-Za-z0-9_-]`.
fn token_end(text: &str, pos: usize) -> Option<usize> {
    let rest = text[pos..].strip_prefix('(')?;
    let run = rest
        .bytes()
        .take_while(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
        .count();
    (run >= 3 && rest.as_bytes().get(run) == Some(&b')')).then_some(pos + 1 + run + 1)
}

/// A raw line of a panel's answer as a config link: trimmed of whitespace and
/// surrounding quotes, kept only when its scheme is vless, vmess, trojan or
/// ss (in any case).
pub fn clean_link(raw: &str) -> Option<&str> {
    clean_bounds(raw).map(|(start, end)| &raw[start..end])
}

/// Where the config link of [`clean_link`] starts and ends in `raw`.
fn clean_bounds(raw: &str) -> Option<(usize, usize)> {
    let is_padding = |ch: char| ch.is_whitespace() || ch == '"' || ch == '\'';
    let link = raw.trim_matches(is_padding);
    let (scheme, rest) = link.split_once("://")?;
    let known = SCHEMES
        .iter()
        .any(|known| scheme.eq_ignore_ascii_case(known));
    if !known || rest.is_empty() {
        return None;
    }
    let start = raw.len() - raw.trim_start_matches(is_padding).len();
    Some((start, start + link.len()))
}

/// The links of one panel that its owner has not disabled, cleaned.
///
/// Each raw line is cleaned first ([`clean_link`]); lines that are not
/// config links are dropped. `disabled_numbers` are then 1-based positions
/// among the panel's config links (after that scheme filter, before any name
/// filter), and `disabled_names` are canonical names ([`canonical_name`]) of
/// configs to drop.
///
/// This deliberately differs from the original, which counted positions
/// after dropping disabled names and before dropping non-config lines, so a
/// disabled number pointed at a different config whenever a name was
/// disabled or the panel added a comment line. Counting among the config
/// links alone matches the numbers operators see in their clients.
pub fn apply_panel_filters(
    links: Vec<String>,
    disabled_names: &HashSet<String>,
    disabled_numbers: &HashSet<u32>,
) -> Vec<String> {
    let mut kept = Vec::with_capacity(links.len());
    let mut position: u32 = 0;
    for mut raw in links {
        let Some((start, end)) = clean_bounds(&raw) else {
            continue;
        };
        position = position.saturating_add(1);
        if disabled_numbers.contains(&position)
            || is_disabled_name(&raw[start..end], disabled_names)
        {
            continue;
        }

        // Reuse the panel's allocation: cut the line down to its clean part.
        raw.truncate(end);
        raw.drain(..start);
        kept.push(raw);
    }
    kept
}

fn is_disabled_name(link: &str, disabled_names: &HashSet<String>) -> bool {
    if disabled_names.is_empty() {
        return false;
    }
    config_name(link).is_some_and(|name| disabled_names.contains(canonical_name(&name).as_str()))
}

/// All panels' links in one list: panels in the order given, each panel's
/// links in its own order, a link seen before dropped.
///
/// The original's order depended on which panel answered first; this one is
/// deterministic, so clients do not reorder their config lists on every
/// refresh. The lists are expected to come from [`apply_panel_filters`],
/// which has already cleaned them.
pub fn merge(per_panel: impl IntoIterator<Item = Vec<String>>) -> Vec<String> {
    let mut merged: Vec<String> = Vec::new();
    for links in per_panel {
        if merged.is_empty() {
            merged = links;
        } else {
            merged.extend(links);
        }
    }

    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(merged.len());
        merged
            .iter()
            .map(|link| seen.insert(link.as_str()))
            .collect()
    };
    let mut keep = keep.into_iter();
    merged.retain(|_| keep.next().unwrap_or(false));
    merged
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    const VLESS_REALITY: &str = "vless://3f1c2a9e-7b4d-4e2a-9c1f-5d6e7f8a9b0c@de1.example.net:443?security=reality&encryption=none&pbk=Tn3sWmZp4yQ8rB2vX9cK1dF6hJ0lA5sE7gU3iO2pR4w&headerType=none&fp=chrome&type=tcp&flow=xtls-rprx-vision&sni=www.speedtest.net&sid=6ba85179e30d4fc2#%F0%9F%87%A9%F0%9F%87%AA%20%D8%A2%D9%84%D9%85%D8%A7%D9%86%201.5GB%2F10GB%20%F0%9F%91%A4%20ali";
    const TROJAN: &str = "trojan://p4ssw0rd@tr.example.org:8443?security=tls&sni=tr.example.org&type=ws&path=%2Fws#Trojan%20%28user_42%29%20NL";
    const SS: &str = "ss://Y2hhY2hhMjAtaWV0Zi1wb2x5MTMwNTpzZWNyZXQ@203.0.113.7:8388#SS%20Fast";

    /// A vmess link in v2rayN's format: base64 of JSON with the name in `ps`.
    fn vmess(name: &str) -> String {
        let json = serde_json::json!({
            "v": "2", "ps": name, "add": "vm.example.com", "port": "443",
            "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "aid": "0", "net": "ws",
            "type": "none", "host": "vm.example.com", "path": "/vm", "tls": "tls",
        });
        format!(
            "vmess://{}",
            base64::engine::general_purpose::STANDARD.encode(json.to_string())
        )
    }

    fn set<T: Clone + Eq + std::hash::Hash>(items: &[T]) -> HashSet<T> {
        items.iter().cloned().collect()
    }

    fn names(list: &[&str]) -> HashSet<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn config_name_is_the_decoded_fragment() {
        assert_eq!(config_name(SS).as_deref(), Some("SS Fast"));
        assert_eq!(config_name(TROJAN).as_deref(), Some("Trojan (user_42) NL"));
        assert_eq!(
            config_name(VLESS_REALITY).as_deref(),
            Some("🇩🇪 آلمان 1.5GB/10GB 👤 ali")
        );
    }

    #[test]
    fn config_name_borrows_when_nothing_is_escaped() {
        let name = config_name("vless://id@h:1#plain-name").unwrap();
        assert!(matches!(name, Cow::Borrowed("plain-name")));
    }

    #[test]
    fn config_name_of_vmess_comes_from_ps() {
        let link = vmess("🇫🇷 فرانسه 👤 sara");
        assert_eq!(config_name(&link).as_deref(), Some("🇫🇷 فرانسه 👤 sara"));
        // Upper-case scheme and stripped padding are still understood.
        let shouted = link.replacen("vmess", "VMESS", 1);
        let unpadded = shouted.trim_end_matches('=');
        assert_eq!(config_name(unpadded).as_deref(), Some("🇫🇷 فرانسه 👤 sara"));
    }

    #[test]
    fn config_name_of_undecodable_vmess_falls_back_to_the_fragment() {
        assert_eq!(
            config_name("vmess://not base64!#Backup").as_deref(),
            Some("Backup")
        );
    }

    #[test]
    fn config_name_is_none_without_a_name() {
        assert_eq!(config_name("vless://id@h:443?type=tcp"), None);
        assert_eq!(config_name("vless://id@h:443?type=tcp#"), None);
        assert_eq!(config_name(&vmess("")), None);
    }

    #[test]
    fn config_name_replaces_invalid_utf8() {
        assert_eq!(
            config_name("ss://x@h:1#a%FFb").as_deref(),
            Some("a\u{FFFD}b")
        );
    }

    #[test]
    fn canonical_name_drops_the_traffic_figure() {
        assert_eq!(canonical_name("Germany 1.5GB/10GB"), "Germany");
        assert_eq!(
            canonical_name("Germany 1.5 GB / 10 gb fast"),
            "Germany fast"
        );
        assert_eq!(canonical_name("NL 512MB/1TB"), "NL");
        assert_eq!(canonical_name("NL 0B/0B"), "NL");
        assert_eq!(canonical_name("NL 120 kb/2KB"), "NL");
        assert_eq!(canonical_name("سرور ۱۵GB/۱۰GB"), "سرور");
    }

    #[test]
    fn canonical_name_keeps_figures_that_are_not_traffic() {
        assert_eq!(canonical_name("Server 10/20"), "Server 10/20");
        assert_eq!(canonical_name("Server 10GB"), "Server 10GB");
        assert_eq!(canonical_name("Port 443 / TCP"), "Port 443 / TCP");
    }

    #[test]
    fn canonical_name_cuts_at_the_person_emoji() {
        assert_eq!(canonical_name("🇩🇪 آلمان 1.5GB/10GB 👤 ali"), "🇩🇪 آلمان");
        assert_eq!(canonical_name("👤 ali 1.5 GB / 10GB"), "");
        assert_eq!(canonical_name("Iran 🇮🇷 👤 ali 1.5 GB / 10GB"), "Iran 🇮🇷");
    }

    #[test]
    fn canonical_name_drops_parenthesised_tokens() {
        assert_eq!(canonical_name("Trojan (user_42) NL"), "Trojan NL");
        assert_eq!(canonical_name("Trojan (ab) NL"), "Trojan (ab) NL");
        assert_eq!(canonical_name("Fast(ali-2)Line"), "Fast Line");
        assert_eq!(
            canonical_name("Fast (with space) Line"),
            "Fast (with space) Line"
        );
        assert_eq!(canonical_name("تهران (ali)"), "تهران");
    }

    #[test]
    fn canonical_name_collapses_whitespace() {
        assert_eq!(canonical_name("  a \t\n b\u{00A0}\u{2003}c  "), "a b c");
        assert_eq!(canonical_name(""), "");
        assert_eq!(canonical_name(" \t "), "");
    }

    #[test]
    fn canonical_name_is_cut_to_255_chars_on_char_boundaries() {
        let long = "آ".repeat(300);
        let canonical = canonical_name(&long);
        assert_eq!(canonical.chars().count(), 255);
        assert_eq!(canonical, "آ".repeat(255));

        // A cut that would end on the separator leaves no trailing space.
        let spaced = format!("{} {}", "a".repeat(254), "b".repeat(10));
        assert_eq!(canonical_name(&spaced), "a".repeat(254));
    }

    #[test]
    fn canonical_name_is_idempotent() {
        for name in [
            "🇩🇪 آلمان 1.5GB/10GB 👤 ali",
            "Trojan (user_42) NL",
            "  x  y ",
            "Server 10/20",
        ] {
            let once = canonical_name(name);
            assert_eq!(canonical_name(&once), once, "{name}");
        }
    }

    #[test]
    fn clean_link_trims_and_keeps_config_schemes() {
        assert_eq!(
            clean_link("  \"vless://id@h:1#a\"\r\n"),
            Some("vless://id@h:1#a")
        );
        assert_eq!(clean_link("'trojan://pw@h:2'"), Some("trojan://pw@h:2"));
        assert_eq!(
            clean_link("VMESS://eyJ2IjoiMiJ9"),
            Some("VMESS://eyJ2IjoiMiJ9")
        );
        assert_eq!(clean_link("Ss://abc@h:3"), Some("Ss://abc@h:3"));
        assert_eq!(clean_link(SS), Some(SS));
    }

    #[test]
    fn clean_link_drops_everything_else() {
        for raw in [
            "",
            "   ",
            "# no configs",
            "https://panel.example.com/sub/x",
            "hysteria2://pw@h:443",
            "vless:/broken",
            "vless://",
            "<html>",
            "{\"links\": []}",
        ] {
            assert_eq!(clean_link(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn panel_filters_count_numbers_among_config_links_only() {
        let links = vec![
            "# profile: premium".to_owned(),
            "vless://a@h:1#A".to_owned(),
            "".to_owned(),
            "vless://b@h:1#B".to_owned(),
            "https://not-a-config".to_owned(),
            "vless://c@h:1#C".to_owned(),
        ];
        let kept = apply_panel_filters(links, &HashSet::new(), &set(&[2]));
        assert_eq!(kept, ["vless://a@h:1#A", "vless://c@h:1#C"]);
    }

    #[test]
    fn panel_filters_count_numbers_before_the_name_filter() {
        let links = vec![
            "vless://a@h:1#A".to_owned(),
            "vless://b@h:1#B".to_owned(),
            "vless://c@h:1#C".to_owned(),
        ];
        // Number 3 is C even though B, before it, is dropped by name.
        let kept = apply_panel_filters(links, &names(&["B"]), &set(&[3]));
        assert_eq!(kept, ["vless://a@h:1#A"]);
    }

    #[test]
    fn panel_filters_compare_canonical_names() {
        let links = vec![
            VLESS_REALITY.to_owned(),
            format!("  {TROJAN} "),
            vmess("🇫🇷 فرانسه 2GB/20GB 👤 sara"),
            SS.to_owned(),
            "ss://nameless@h:1".to_owned(),
        ];
        let disabled = names(&["🇩🇪 آلمان", "Trojan NL", "🇫🇷 فرانسه"]);
        let kept = apply_panel_filters(links, &disabled, &HashSet::new());
        assert_eq!(kept, [SS, "ss://nameless@h:1"]);
    }

    #[test]
    fn panel_filters_without_rules_only_clean() {
        let links = vec![format!("\"{SS}\""), "junk".to_owned(), TROJAN.to_owned()];
        let kept = apply_panel_filters(links, &HashSet::new(), &HashSet::new());
        assert_eq!(kept, [SS, TROJAN]);
    }

    #[test]
    fn merge_keeps_panel_order_and_the_first_duplicate() {
        let first = vec!["vless://a@h:1#A".to_owned(), "ss://s@h:2#S".to_owned()];
        let second = vec!["trojan://t@h:3#T".to_owned(), "vless://a@h:1#A".to_owned()];
        let third = vec![];
        let fourth = vec!["ss://s@h:2#S".to_owned(), "vmess://eyJ9".to_owned()];
        let merged = merge([first, second, third, fourth]);
        assert_eq!(
            merged,
            [
                "vless://a@h:1#A",
                "ss://s@h:2#S",
                "trojan://t@h:3#T",
                "vmess://eyJ9"
            ]
        );
    }

    #[test]
    fn merge_dedupes_within_one_panel_and_handles_nothing() {
        let merged = merge([vec!["ss://x".to_owned(), "ss://x".to_owned()]]);
        assert_eq!(merged, ["ss://x"]);
        assert!(merge(Vec::<Vec<String>>::new()).is_empty());
    }
}
