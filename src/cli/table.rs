//! Aligned tables for `netkeyctl`'s human output: columns as wide as their widest cell,
//! numbers right-aligned.

/// A table with a header row; `right` marks the columns aligned right.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named `NAME`, or `>NAME` for a right-aligned (numeric) one.
    pub fn new(columns: &[&str]) -> Table {
        Table {
            header: columns
                .iter()
                .map(|c| c.trim_start_matches('>').to_string())
                .collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The lines, without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        let n = self.header.len();
        let mut width = vec![0usize; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| {
                        let c = r.get(i).map(String::as_str).unwrap_or("");
                        let pad = width[i].saturating_sub(c.chars().count());
                        if self.right[i] {
                            format!("{}{c}", " ".repeat(pad))
                        } else if i + 1 == n {
                            c.to_string()
                        } else {
                            format!("{c}{}", " ".repeat(pad))
                        }
                    })
                    .collect();
                cells.join("  ").trim_end().to_string()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_their_widest_cell() {
        let mut t = Table::new(&["NAME", ">N", "NOTE"]);
        t.row(vec!["a".into(), "1".into(), "x".into()]);
        t.row(vec!["long name".into(), "123".into(), String::new()]);
        assert_eq!(
            t.lines(),
            [
                "NAME         N  NOTE",
                "a            1  x",
                "long name  123"
            ]
        );
    }
}
