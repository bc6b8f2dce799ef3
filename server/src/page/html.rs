//! HTML escaping and the shell every page shares: head, inline style, inline copy script.

use std::borrow::Cow;

use super::text::Text;

/// `text` safe to put in HTML content or in a quoted attribute value.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for ch in text.chars() {
        match ch {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    Cow::Owned(escaped)
}

/// The page may load nothing from anywhere: its users sit behind filters
/// that block CDNs, and a page that needs nothing from elsewhere cannot be
/// slowed or broken by them. The policy makes the browser enforce that for
/// anything added later, too.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     script-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// System fonts only. Tahoma and Segoe UI carry Persian on Windows, the
/// system UI fonts do on phones, and DejaVu Sans and Noto cover Linux.
const STYLE: &str = r#"
:root{color-scheme:light dark;--bg:#eef1f7;--card:#fff;--text:#182032;--muted:#5a6478;--line:#dde2ec;--track:#e6eaf2;--accent:#2d6cdf;--ok:#15803d;--warn:#b45309;--bad:#c62828;--off:#64748b}
@media (prefers-color-scheme:dark){:root{--bg:#0d121c;--card:#161e2d;--text:#e6eaf2;--muted:#9aa5ba;--line:#263146;--track:#243047;--accent:#6d9eff;--ok:#4ade80;--warn:#fbbf24;--bad:#f87171;--off:#94a3b8}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;padding:16px;background:var(--bg);color:var(--text);font:16px/1.65 system-ui,-apple-system,"Segoe UI",Tahoma,Roboto,"Noto Sans Arabic","Noto Sans","DejaVu Sans",sans-serif}
main{max-width:460px;margin:0 auto}
.card{background:var(--card);border:1px solid var(--line);border-radius:16px;padding:16px 18px;margin:0 0 12px}
h1{font-size:1.15rem;margin:0}
h2{font-size:.85rem;font-weight:600;color:var(--muted);margin:0 0 6px}
p{margin:0}
.head{display:flex;align-items:center;justify-content:space-between;gap:12px;flex-wrap:wrap}
.user{font-size:1.35rem;font-weight:700;overflow-wrap:anywhere}
.badge{display:inline-block;padding:3px 12px;border-radius:999px;font-size:.85rem;font-weight:600;color:#fff;background:var(--off)}
.state-active .badge{background:var(--ok)}
.state-expired .badge{background:var(--warn)}
.state-limit-reached .badge{background:var(--bad)}
@media (prefers-color-scheme:dark){.badge{color:#0d121c}}
.note{color:var(--muted);font-size:.92rem;margin-top:8px}
.figures{font-size:1.05rem;font-weight:600}
.figures .limit{font-weight:400;color:var(--muted)}
.bar{height:10px;border-radius:999px;background:var(--track);overflow:hidden;margin:8px 0 6px}
.bar span{display:block;height:100%;border-radius:999px;background:var(--accent)}
.state-limit-reached .bar span{background:var(--bad)}
.sub{display:flex;justify-content:space-between;gap:8px;color:var(--muted);font-size:.9rem}
.dates{display:grid;grid-template-columns:auto 1fr;gap:2px 12px}
.dates dt{color:var(--muted);font-size:.9rem}
.dates dd{margin:0;font-weight:600}
.left{margin-top:6px;font-weight:600}
.hint{color:var(--muted);font-size:.9rem;margin-bottom:10px}
.url{display:block;direction:ltr;text-align:left;font:13px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;background:var(--track);border-radius:10px;padding:10px 12px;overflow-wrap:anywhere;user-select:all}
button[hidden]{display:none}
button{font:inherit;font-weight:600;width:100%;margin-top:10px;padding:10px;border:0;border-radius:10px;background:var(--accent);color:#fff;cursor:pointer}
@media (prefers-color-scheme:dark){button{color:#0d121c}}
button:active{opacity:.8}
figure{margin:14px 0 0;text-align:center}
svg.qr{width:min(240px,100%);height:auto;border-radius:8px}
figcaption{color:var(--muted);font-size:.85rem;margin-top:4px}
.missing{text-align:center;padding:32px 18px}
.missing .mark{font-size:2.4rem;line-height:1;color:var(--muted)}
.missing h1{margin:10px 0 8px}
"#;

/// Copies the URL: the asynchronous clipboard API where the page is a
/// secure context, a selection and `execCommand` where it is not (plain
/// HTTP deployments).
const COPY_SCRIPT: &str = r#"
(function(){var b=document.getElementById("copy"),u=document.getElementById("sub-url");if(!b||!u)return;b.hidden=false;
function done(){b.textContent=b.getAttribute("data-done");}
function select(){var r=document.createRange();r.selectNodeContents(u);var s=window.getSelection();s.removeAllRanges();s.addRange(r);try{if(document.execCommand("copy"))done();}catch(e){}}
b.addEventListener("click",function(){if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(u.textContent).then(done,select);}else{select();}});})();
"#;

/// A whole document: `title` (already escaped) in the head, `body` (already
/// HTML) in `<main>`, and the copy script when the page has a copy button.
pub fn document(text: &Text, title: &str, body: &str, with_script: bool) -> String {
    let mut page = String::with_capacity(STYLE.len() + body.len() + 1024);
    page.push_str("<!doctype html>\n<html lang=\"");
    page.push_str(text.code);
    page.push_str("\" dir=\"");
    page.push_str(text.dir);
    page.push_str("\">\n<head>\n<meta charset=\"utf-8\">\n");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    page.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"");
    page.push_str(CONTENT_SECURITY_POLICY);
    page.push_str("\">\n<meta name=\"referrer\" content=\"no-referrer\">\n");
    page.push_str("<meta name=\"robots\" content=\"noindex\">\n");
    page.push_str("<meta name=\"color-scheme\" content=\"light dark\">\n<title>");
    page.push_str(title);
    page.push_str("</title>\n<style>");
    page.push_str(STYLE);
    page.push_str("</style>\n</head>\n<body>\n<main>\n");
    page.push_str(body);
    page.push_str("</main>\n");
    if with_script {
        page.push_str("<script>");
        page.push_str(COPY_SCRIPT);
        page.push_str("</script>\n");
    }
    page.push_str("</body>\n</html>\n");
    page
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn escape_replaces_the_five_special_characters() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn escape_borrows_plain_text() {
        assert!(matches!(escape("علی ali"), Cow::Borrowed("علی ali")));
    }
}
