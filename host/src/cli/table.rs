//! Plain-text tables for the terminal.

/// Left-aligned columns, the last one unpadded.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        for (column, cell) in cells.iter().enumerate() {
            if column + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn pads_every_column_but_the_last() {
        let rows = [
            ["vllm".to_string(), "x".to_string()],
            ["llama-cpp".to_string(), "y".to_string()],
        ];
        assert_eq!(
            table(["NAME", "S"], &rows),
            "NAME       S\nvllm       x\nllama-cpp  y\n"
        );
    }
}
