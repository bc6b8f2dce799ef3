//! The QR code of the subscription URL, drawn as inline SVG so the page loads no image.

use std::fmt::Write as _;

use qrcode::{Color, EcLevel, QrCode};

/// Light modules around the code that scanners need to find it; the
/// standard asks for four.
const QUIET_ZONE: usize = 4;

/// An `<svg>` element showing `text` as a QR code, or `None` when the text
/// is too long for one.
///
/// Dark modules are drawn as one path of horizontal runs, which keeps the
/// markup a few kilobytes for a subscription URL. The code is black on
/// white whatever the page's colour scheme, as scanners expect. There is no
/// `xmlns`: inside HTML the parser places `<svg>` in the SVG namespace.
pub fn svg(text: &str, label: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let size = width + 2 * QUIET_ZONE;

    let mut path = String::with_capacity(width * width);
    for (y, row) in colors.chunks(width).enumerate() {
        let mut x = 0;
        while x < width {
            if row[x] == Color::Light {
                x += 1;
                continue;
            }
            let start = x;
            while x < width && row[x] == Color::Dark {
                x += 1;
            }
            let run = x - start;
            let _ = write!(
                path,
                "M{} {}h{run}v1h-{run}z",
                start + QUIET_ZONE,
                y + QUIET_ZONE
            );
        }
    }

    Some(format!(
        "<svg class=\"qr\" viewBox=\"0 0 {size} {size}\" role=\"img\" aria-label=\"{label}\" \
         shape-rendering=\"crispEdges\"><rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/>\
         <path fill=\"#000\" d=\"{path}\"/></svg>",
        label = super::html::escape(label),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    /// Reads the dark modules back out of the path, as a scanner would see them.
    fn modules(svg: &str) -> Vec<(usize, usize)> {
        let path = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let mut dark = Vec::new();
        for run in path.split('M').filter(|run| !run.is_empty()) {
            let (position, rest) = run.split_once('h').unwrap();
            let (x, y) = position.split_once(' ').unwrap();
            let length: usize = rest.split('v').next().unwrap().parse().unwrap();
            let x: usize = x.parse().unwrap();
            let y: usize = y.parse().unwrap();
            dark.extend((x..x + length).map(|column| (column - QUIET_ZONE, y - QUIET_ZONE)));
        }
        dark
    }

    #[test]
    fn the_path_draws_exactly_the_dark_modules() {
        let url = "https://sub.example.com/sub/ali/k3y/links";
        let svg = svg(url, "QR").unwrap();
        let code = QrCode::with_error_correction_level(url, EcLevel::M).unwrap();
        let width = code.width();
        let expected: Vec<(usize, usize)> = code
            .to_colors()
            .iter()
            .enumerate()
            .filter(|(_, color)| **color == Color::Dark)
            .map(|(index, _)| (index % width, index / width))
            .collect();
        let mut drawn = modules(&svg);
        drawn.sort_by_key(|(x, y)| (*y, *x));
        assert_eq!(drawn, expected);
        let size = width + 2 * QUIET_ZONE;
        assert!(svg.contains(&format!("viewBox=\"0 0 {size} {size}\"")));
    }

    #[test]
    fn the_label_is_escaped_and_nothing_is_loaded() {
        let svg = svg("x", "<QR \"code\">").unwrap();
        assert!(svg.contains("aria-label=\"&lt;QR &quot;code&quot;&gt;\""));
        assert!(!svg.contains("http"));
    }

    #[test]
    fn text_too_long_for_a_code_gives_none() {
        assert!(svg(&"a".repeat(8000), "QR").is_none());
    }
}
