//! Dependency order: who starts first, and the cycle that makes that impossible.

use std::collections::BTreeMap;

/// The services in an order where each comes after everything it depends on, or
/// the first cycle found, as a path that ends where it starts.
pub fn dependency_order(
    depends_on: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        graph: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| n == name).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(name.to_string());
                return Err(cycle);
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        path.push(name.to_string());
        for dependency in graph.get(name).into_iter().flatten() {
            visit(dependency, graph, marks, path, order)?;
        }
        path.pop();
        marks.insert(name.to_string(), Mark::Done);
        order.push(name.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut order = Vec::new();
    for name in depends_on.keys() {
        visit(name, depends_on, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, deps)| (n.to_string(), deps.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn dependencies_come_first() {
        let order = dependency_order(&graph(&[
            ("api", &["cache", "llm"]),
            ("llm", &["cache"]),
            ("cache", &[]),
        ]))
        .unwrap();
        assert_eq!(order, ["cache", "llm", "api"]);
    }

    #[test]
    fn a_cycle_is_named_as_a_path() {
        let cycle =
            dependency_order(&graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])])).unwrap_err();
        assert_eq!(cycle, ["a", "b", "c", "a"]);
        assert_eq!(
            dependency_order(&graph(&[("x", &["x"])])).unwrap_err(),
            ["x", "x"]
        );
    }
}
