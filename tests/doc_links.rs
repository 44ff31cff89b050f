//! README.md and docs/*.md stay true to the tree: every relative link and image resolves to a
//! file (and its `#anchor` to a heading of that page), and every source file a page names in
//! backticks exists.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Files a page names that the program writes, not the repository holds.
const WRITTEN_BY_THE_PROGRAM: [&str; 1] = ["summary.md"];

/// Every file under the root but build outputs and version control, relative to the root.
fn tree() -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, files: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "runs" | ".gpu") {
                    walk(&path, root, files);
                }
            } else {
                let relative = path.strip_prefix(root).unwrap();
                files.insert(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut files = BTreeSet::new();
    walk(Path::new(ROOT), Path::new(ROOT), &mut files);
    files
}

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let docs = std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap();
    let mut found: Vec<PathBuf> = docs
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(ROOT).unwrap().to_path_buf())
        .collect();
    found.sort();
    pages.extend(found);
    pages
}

/// A page's text without its fenced code blocks, where links are not links.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            let target = rest[..end].trim();
            // Skip a title after the address, `(path "title")`.
            let target = target.split_whitespace().next().unwrap_or("");
            targets.push(target.to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings, repeated ones numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose(text).lines() {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `a/b/../c` as `a/c`.
fn normalise(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            other => parts.push(other.as_os_str().to_string_lossy().to_string()),
        }
    }
    parts.join("/")
}

fn read(page: &Path) -> String {
    let path = Path::new(ROOT).join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every broken link of every page, as "page: target (why)".
fn broken_links() -> Vec<String> {
    let files = tree();
    let is_dir = |path: &str| files.iter().any(|f| f.starts_with(&format!("{path}/")));
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().unwrap_or(Path::new(""));
        for target in link_targets(&prose(&text)) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                page.to_string_lossy().to_string()
            } else {
                normalise(&dir.join(path))
            };
            let resolved = resolved.trim_end_matches('/').to_string();
            if !files.contains(&resolved) && !is_dir(&resolved) {
                broken.push(format!("{}: {target} (no file {resolved})", page.display()));
                continue;
            }
            if let (Some(anchor), true) = (anchor, resolved.ends_with(".md")) {
                if !anchors(&read(Path::new(&resolved))).contains(anchor) {
                    broken.push(format!(
                        "{}: {target} (no heading #{anchor} in {resolved})",
                        page.display()
                    ));
                }
            }
        }
    }
    broken
}

/// Every backticked file name a page mentions that the tree lacks: paths are looked up from the
/// root, from the page's folder and as the tail of a file's path; bare names anywhere.
fn missing_files() -> Vec<String> {
    const SOURCES: [&str; 10] = [
        "rs", "cu", "cuh", "h", "cpp", "py", "sh", "toml", "md", "svg",
    ];
    let files = tree();
    let mut missing = Vec::new();
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().unwrap_or(Path::new(""));
        for span in text.split('`').skip(1).step_by(2) {
            let name = span.trim();
            let path_like = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
            // A file name with a stem: `.cu` alone names an extension, not a file.
            let extension = name
                .rsplit_once('.')
                .filter(|(stem, _)| !stem.is_empty() && !stem.ends_with('/'))
                .map(|(_, e)| e);
            if !path_like || !extension.is_some_and(|e| SOURCES.contains(&e)) {
                continue;
            }
            if WRITTEN_BY_THE_PROGRAM.contains(&name) {
                continue;
            }
            let found = if name.contains('/') {
                let from_page = normalise(&dir.join(name));
                files.contains(name)
                    || files.contains(&from_page)
                    || files.iter().any(|f| f.ends_with(&format!("/{name}")))
            } else {
                files
                    .iter()
                    .any(|f| f == name || f.ends_with(&format!("/{name}")))
            };
            if !found {
                missing.push(format!("{}: `{name}`", page.display()));
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

#[test]
fn every_link_of_the_pages_resolves() {
    let broken = broken_links();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_file_the_pages_name_exists() {
    let missing = missing_files();
    assert!(
        missing.is_empty(),
        "named but missing:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_checker_finds_a_broken_link_and_anchor() {
    let text = "see [a](gone.md), [b](#nowhere) and [c](http://x.y/z)\n# A heading: `code`, too\n";
    assert_eq!(link_targets(text), ["gone.md", "#nowhere", "http://x.y/z"]);
    assert_eq!(
        anchors(text).into_iter().collect::<Vec<_>>(),
        ["a-heading-code-too"]
    );
    assert_eq!(slug("Step 4: tensor cores"), "step-4-tensor-cores");
    assert_eq!(
        normalise(Path::new("docs/../src/cpu/gemm.rs")),
        "src/cpu/gemm.rs"
    );
}
