//! The docs link check: every relative link in `README.md`, `docs/*.md` and
//! `clients/js/README.md` (when it exists) points to a file that exists, and
//! every `#anchor` to a heading of the target page.
//!
//! Anchors are GitHub's heading slugs, the ones its renderer gives each
//! heading: the heading's text, lowercased, with every character that is not
//! a letter, a digit, a space, `-` or `_` removed, and each space turned into
//! `-`; a repeated slug gets `-1`, `-2`, … in order. Links inside fenced code
//! blocks and inline code spans are not links, and are skipped.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The markdown files whose links are checked, relative to the repository.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    if let Ok(dir) = fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> =
            dir.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
        docs.sort();
        pages.extend(docs);
    }
    let js = root.join("clients/js/README.md");
    if js.exists() {
        pages.push(js);
    }
    pages
}

/// GitHub's slug of one heading's text.
fn slug(heading: &str) -> String {
    heading
        .chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text a heading renders to: link targets, code backticks and
/// emphasis markers dropped (`[a](b)` renders as `a`).
fn heading_text(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw.trim().trim_end_matches('#').trim_end();
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|i| open + i) else { break };
        let Some(end) = rest[close..].find(')').map(|i| close + i) else { break };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out.replace(['`', '*'], "")
}

/// Lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = if t.starts_with("```") {
            Some("```")
        } else if t.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// Every anchor the page's headings produce.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&heading_text(&line[hashes..]));
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Removes inline code spans (`` `...` ``), whose brackets are not links.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The link targets on one line: inline `[text](target)` and `![alt](target)`,
/// and reference definitions `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(i) = trimmed.find("]:")
    {
        if let Some(t) = trimmed[i + 2..].split_whitespace().next() {
            targets.push(t.trim_matches(['<', '>']).to_string());
        }
        return targets;
    }
    let mut rest = line.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        let inner = after[..end].trim();
        // `(target "title")`: the target is the first word.
        if let Some(t) = inner.split_whitespace().next() {
            targets.push(t.trim_matches(['<', '>']).to_string());
        }
        rest = &after[end + 1..];
    }
    targets
}

/// Whether a target leaves the repository (a URL or a mail address).
fn is_external(target: &str) -> bool {
    let scheme = target.split(':').next().unwrap_or("");
    target.contains(':')
        && !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !target.starts_with('#')
}

/// Every broken relative link in `pages`, as "page:line: target: why".
fn broken_links(pages: &[PathBuf]) -> Vec<String> {
    let mut anchor_cache: HashMap<PathBuf, Vec<String>> = HashMap::new();
    let mut broken = Vec::new();
    for page in pages {
        let text = match fs::read_to_string(page) {
            Ok(t) => t,
            Err(e) => {
                broken.push(format!("{}: cannot read: {e}", page.display()));
                continue;
            }
        };
        let dir = page.parent().unwrap_or(Path::new("."));
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.is_empty() || is_external(&target) {
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() { page.clone() } else { dir.join(path) };
                let whence = format!("{}:{n}: ({target})", page.display());
                if !file.exists() {
                    broken.push(format!("{whence}: no such file {}", file.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if file.extension().is_none_or(|x| x != "md") {
                    broken.push(format!("{whence}: an anchor into a file that is not markdown"));
                    continue;
                }
                let known = anchor_cache
                    .entry(file.clone())
                    .or_insert_with(|| fs::read_to_string(&file).map(|t| anchors(&t)).unwrap_or_default());
                if !known.iter().any(|a| a == anchor) {
                    broken.push(format!("{whence}: no heading with anchor #{anchor} in {}", file.display()));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pages = pages(root);
    assert!(pages.len() > 1, "expected README.md and docs/*.md, found {pages:?}");
    let broken = broken_links(&pages);
    assert!(broken.is_empty(), "broken links in the docs:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_githubs_rules() {
    let cases = [
        ("Readiness and drain", "readiness-and-drain"),
        ("`GET /ws` — the WebSocket", "get-ws--the-websocket"),
        ("Several processes on one machine (REUSE_PORT)", "several-processes-on-one-machine-reuse_port"),
        ("Issue 11: answer first (ba2cb68 → b483600)", "issue-11-answer-first-ba2cb68--b483600"),
        ("TCP_NODELAY", "tcp_nodelay"),
        ("See [the page](x.md#y) now", "see-the-page-now"),
    ];
    for (heading, want) in cases {
        assert_eq!(slug(&heading_text(heading)), want, "heading {heading:?}");
    }
    let page = "# A\n## A\n```\n# not a heading\n```\n## A\n#nospace\n";
    assert_eq!(anchors(page), ["a", "a-1", "a-2"]);
}

#[test]
fn a_broken_file_or_anchor_is_reported() {
    let dir = std::env::temp_dir().join(format!("taskcast-docs-links-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let page = dir.join("page.md");
    fs::write(dir.join("other.md"), "# Other page\n## A section\n").unwrap();
    fs::write(
        &page,
        "# Page\n\
         [ok](other.md#a-section) [ok](#page) [ok](https://example.com/x.md) `[code](missing.md)`\n\
         ```\n[in a fence](missing.md)\n```\n\
         [gone](missing.md)\n\
         [bad anchor](other.md#no-such-section)\n\
         [bad here](#nowhere)\n\
         [ref]: also-missing.md\n",
    )
    .unwrap();
    let broken = broken_links(std::slice::from_ref(&page));
    fs::remove_dir_all(&dir).unwrap();
    let want = [
        "(missing.md): no such file",
        "(other.md#no-such-section): no heading with anchor #no-such-section",
        "(#nowhere): no heading with anchor #nowhere",
        "(also-missing.md): no such file",
    ];
    assert_eq!(broken.len(), want.len(), "{broken:#?}");
    for (got, want) in broken.iter().zip(want) {
        assert!(got.contains(want), "expected {want:?} in {got:?}");
    }
}
