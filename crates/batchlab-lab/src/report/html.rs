//! [`html_page`]: one self-contained HTML file; [`terminal_table`]: aligned columns for stdout.

use std::fmt::Write as _;

use super::{Section, Table};

/// A remark that table cells refer to by ending in ` {mark}`: a table with such a cell shows
/// the remark once below its rows, on the page (where the cells carry it as title text too) and
/// in the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footnote {
    /// The sign after a cell's value.
    pub mark: &'static str,
    /// The remark, shown after the sign.
    pub text: &'static str,
}

impl Footnote {
    /// `value` followed by the mark.
    pub(crate) fn mark_cell(&self, value: &str) -> String {
        format!("{value} {}", self.mark)
    }

    /// Whether `cell` refers to this note.
    fn marks(&self, cell: &str) -> bool {
        cell.strip_suffix(self.mark)
            .is_some_and(|rest| rest.ends_with(' '))
    }
}

/// How to read a negative `B_simple` in a table of trials.
pub(crate) const NEGATIVE_B_SIMPLE: Footnote = Footnote {
    mark: "†",
    text: "B_simple = tr Σ / |G|² below zero: |G|² is estimated without bias from the gradient \
           norms at two batch sizes (the noise subtracted), so its estimate goes negative when \
           the true gradient is small against the noise. Such a value is no batch size: read it \
           as very large, beyond what the measurement resolves.",
};

/// Every footnote a table's cells may refer to.
const FOOTNOTES: [Footnote; 1] = [NEGATIVE_B_SIMPLE];

/// The footnotes that some cell of `table` refers to, in [`FOOTNOTES`] order.
fn footnotes(table: &Table) -> Vec<Footnote> {
    FOOTNOTES
        .into_iter()
        .filter(|f| table.rows.iter().flatten().any(|c| f.marks(c)))
        .collect()
}

/// The footnote that `cell` refers to, if any.
fn footnote_of(cell: &str) -> Option<Footnote> {
    FOOTNOTES.into_iter().find(|f| f.marks(cell))
}

/// Text made safe inside HTML and SVG elements and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Inline style sheet: no fonts or images are fetched.
const CSS: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;\
color:#222;background:#fff;max-width:1400px;margin:0 auto;padding:1.5rem 2rem;line-height:1.45}
h1{font-size:1.6rem;margin:0 0 .5rem}
h2{font-size:1.25rem;margin:2rem 0 .4rem;padding-top:.6rem;border-top:1px solid #ddd}
p{max-width:60rem;margin:.4rem 0}
.figures{display:flex;flex-wrap:wrap;gap:1rem;margin:.8rem 0}
figure{margin:0;border:1px solid #e4e4e4;border-radius:4px;background:#fff}
figure svg{display:block;max-width:100%;height:auto}
table{border-collapse:collapse;margin:.8rem 0;font-variant-numeric:tabular-nums;font-size:.9rem}
th,td{border-bottom:1px solid #e4e4e4;padding:.25rem .7rem;text-align:right}
th{border-bottom:2px solid #bbb;background:#f6f6f6}
th:first-child,td:first-child{text-align:left}
td.note{text-align:left;color:#555;border-bottom:none;padding-top:.5rem;max-width:60rem}
";

/// Paragraphs of escaped text: blank lines separate them.
fn paragraphs(out: &mut String, text: &str) {
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "<p>{}</p>", escape(para));
    }
}

fn html_table(out: &mut String, table: &Table) {
    out.push_str("<table>\n<thead><tr>");
    for h in &table.header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    let columns = table
        .rows
        .iter()
        .map(Vec::len)
        .chain([table.header.len()])
        .max()
        .unwrap_or(0);
    for row in &table.rows {
        out.push_str("<tr>");
        for i in 0..columns {
            let cell = row.get(i).map_or("", String::as_str);
            match footnote_of(cell) {
                Some(f) => {
                    let _ = write!(
                        out,
                        "<td title=\"{}\">{}</td>",
                        escape(f.text),
                        escape(cell)
                    );
                }
                None => {
                    let _ = write!(out, "<td>{}</td>", escape(cell));
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n");
    let notes = footnotes(table);
    if !notes.is_empty() {
        out.push_str("<tfoot>\n");
        for f in notes {
            let _ = writeln!(
                out,
                "<tr><td class=\"note\" colspan=\"{}\">{} {}</td></tr>",
                columns.max(1),
                escape(f.mark),
                escape(f.text)
            );
        }
        out.push_str("</tfoot>\n");
    }
    out.push_str("</table>\n");
}

/// A complete HTML page: `title` as `<h1>`, `intro` paragraphs, then each section's heading,
/// paragraphs, figures and table. All text is escaped; figures are embedded verbatim as inline
/// SVG, so pass SVG made by [`svg`](super::svg) or [`heatmap_svg`](super::heatmap_svg). The page
/// has inline CSS, no scripts and no external references: it is one file to open or mail.
pub fn html_page(title: &str, intro: &str, sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{t}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    paragraphs(&mut out, intro);
    for section in sections {
        let _ = writeln!(out, "<section>\n<h2>{}</h2>", escape(&section.title));
        paragraphs(&mut out, &section.text);
        if !section.figures.is_empty() {
            out.push_str("<div class=\"figures\">\n");
            for figure in &section.figures {
                let _ = writeln!(out, "<figure>\n{}\n</figure>", figure.trim());
            }
            out.push_str("</div>\n");
        }
        if let Some(table) = &section.table {
            html_table(&mut out, table);
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Whether a cell reads as a number (right-aligned): `12`, `-3.5e-4`, `0.25`, `inf`, `NaN`,
/// also with a footnote mark after it.
fn numeric(cell: &str) -> bool {
    let value = footnote_of(cell).map_or(cell, |f| &cell[..cell.len() - f.mark.len()]);
    !value.trim().is_empty() && value.trim().parse::<f64>().is_ok()
}

/// The table as aligned text: a header, a rule, one line per row; columns two spaces apart,
/// numbers right-aligned, every line padded to the same width (in characters); then the
/// footnotes its cells refer to, one line each.
pub fn terminal_table(t: &Table) -> String {
    let columns = t
        .rows
        .iter()
        .map(Vec::len)
        .chain([t.header.len()])
        .max()
        .unwrap_or(0);
    let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            std::iter::once(&t.header)
                .chain(&t.rows)
                .map(|row| cell(row, i).chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |row: &[String], right: &dyn Fn(&str) -> bool| {
        let cells: Vec<String> = (0..columns)
            .map(|i| {
                let text = cell(row, i);
                let pad = " ".repeat(widths[i] - text.chars().count());
                if right(&text) {
                    pad + &text
                } else {
                    text + &pad
                }
            })
            .collect();
        cells.join("  ")
    };
    let mut out = line(&t.header, &|_| false);
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    out.push_str(&rule.join("  "));
    out.push('\n');
    for row in &t.rows {
        out.push_str(&line(row, &numeric));
        out.push('\n');
    }
    for f in footnotes(t) {
        out.push_str(&format!("{} {}\n", f.mark, f.text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|&c| c.to_owned()).collect()
    }

    #[test]
    fn page_escapes_text_and_embeds_every_section_and_svg() {
        let sections = [
            Section {
                title: "Critical <b>batch</b>".into(),
                text: "<script>alert(1)</script>\n\nsecond & last paragraph".into(),
                figures: vec![
                    "<svg id=\"one\"></svg>".into(),
                    "<svg id=\"two\"></svg>".into(),
                ],
                table: Some(Table {
                    header: strings(&["B", "steps"]),
                    rows: vec![strings(&["64", "<1000>"])],
                }),
            },
            Section {
                title: "Warmup".into(),
                figures: vec!["<svg id=\"three\"></svg>".into()],
                ..Section::default()
            },
        ];
        let page = html_page("Report \"A\"", "intro <script>", &sections);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(
            !page.contains("<script"),
            "no script element, whatever the text says"
        );
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(
            page.contains("Critical &lt;b&gt;batch&lt;/b&gt;") && page.contains("<h2>Warmup</h2>")
        );
        assert!(page.contains("<p>second &amp; last paragraph</p>"));
        assert!(page.contains("<td>&lt;1000&gt;</td>"));
        for id in ["one", "two", "three"] {
            assert!(page.contains(&format!("<svg id=\"{id}\"></svg>")));
        }
    }

    #[test]
    fn page_references_nothing_outside_itself() {
        let page = html_page(
            "t",
            "i",
            &[Section {
                title: "s".into(),
                ..Section::default()
            }],
        );
        let lower = page.to_lowercase();
        for attr in ["src=", "href=", "url(", "@import", "<link", "<script"] {
            assert!(!lower.contains(attr), "{attr}");
        }
    }

    #[test]
    fn terminal_columns_line_up() {
        let table = Table {
            header: strings(&["B", "status", "η"]),
            rows: vec![
                strings(&["1024", "COMPLETE", "0.25"]),
                strings(&["8", "INFEASIBLE"]),
                strings(&["65536", "INCOMPLETE", "1e-3", "extra"]),
            ],
        };
        let text = terminal_table(&table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + 3);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "{text}");
        assert_eq!(lines[1], "-----  ----------  ----  -----");
        assert_eq!(lines[2], " 1024  COMPLETE    0.25       ");
        assert_eq!(lines[4], "65536  INCOMPLETE  1e-3  extra");
    }
}
