//! Strongly connected components of a directed graph (Tarjan's algorithm), for finding cycles.

/// The components of the graph with `n` nodes and `edges`, each sorted, in order of their
/// smallest node; singletons included.
pub fn strongly_connected(n: usize, edges: impl IntoIterator<Item = (usize, usize)>) -> Vec<Vec<usize>> {
    let mut successors = vec![Vec::new(); n];
    for (from, to) in edges {
        successors[from].push(to);
    }
    let mut tarjan = Tarjan {
        successors,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for node in 0..n {
        if tarjan.index[node].is_none() {
            tarjan.visit(node);
        }
    }
    let mut components = tarjan.components;
    for component in &mut components {
        component.sort_unstable();
    }
    components.sort();
    components
}

struct Tarjan {
    successors: Vec<Vec<usize>>,
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan {
    /// Recursive: module trees are shallow enough (a few hundred nodes at most).
    fn visit(&mut self, node: usize) {
        self.index[node] = Some(self.next);
        self.low[node] = self.next;
        self.next += 1;
        self.stack.push(node);
        self.on_stack[node] = true;
        for i in 0..self.successors[node].len() {
            let next = self.successors[node][i];
            match self.index[next] {
                None => {
                    self.visit(next);
                    self.low[node] = self.low[node].min(self.low[next]);
                }
                Some(index) if self.on_stack[next] => self.low[node] = self.low[node].min(index),
                Some(_) => {}
            }
        }
        if Some(self.low[node]) == self.index[node] {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strongly_connected;

    #[test]
    fn a_ring_is_one_component_and_a_chain_is_singletons() {
        assert_eq!(strongly_connected(3, [(0, 1), (1, 2), (2, 0)]), vec![vec![0, 1, 2]]);
        assert_eq!(strongly_connected(3, [(0, 1), (1, 2)]), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(strongly_connected(4, [(0, 1), (1, 0), (2, 3)]), vec![vec![0, 1], vec![2], vec![3]]);
    }
}
