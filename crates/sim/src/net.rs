//! The simulated network between nodes: directed links that partitions cut (several
//! partitions may cut the same link; it works again when the last one heals).

use std::collections::BTreeMap;

/// Which directed links are cut, and by which partitions.
#[derive(Debug, Default)]
pub struct Net {
    cuts: BTreeMap<(usize, usize), u32>,
    partitions: BTreeMap<u64, Vec<(usize, usize)>>,
    next_id: u64,
}

impl Net {
    /// Whether `from` → `to` is cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cuts.get(&(from, to)).is_some_and(|n| *n > 0)
    }

    /// Cuts `links` (directed) until [`Net::heal`] with the returned id.
    pub fn cut(&mut self, links: Vec<(usize, usize)>) -> u64 {
        self.next_id += 1;
        for l in &links {
            *self.cuts.entry(*l).or_insert(0) += 1;
        }
        self.partitions.insert(self.next_id, links);
        self.next_id
    }

    /// Heals partition `id` (no-op if already healed).
    pub fn heal(&mut self, id: u64) {
        let Some(links) = self.partitions.remove(&id) else {
            return;
        };
        for l in links {
            if let Some(n) = self.cuts.get_mut(&l) {
                *n -= 1;
                if *n == 0 {
                    self.cuts.remove(&l);
                }
            }
        }
    }

    /// Heals everything.
    pub fn heal_all(&mut self) {
        self.cuts.clear();
        self.partitions.clear();
    }

    /// Partitions in force.
    pub fn active(&self) -> usize {
        self.partitions.len()
    }
}

/// Every directed link into and out of `node` among `n` nodes.
pub fn isolate(node: usize, n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .filter(|o| *o != node)
        .flat_map(|o| [(node, o), (o, node)])
        .collect()
}

/// Every link between the two sides.
pub fn split(side: &[usize], n: usize) -> Vec<(usize, usize)> {
    let other: Vec<usize> = (0..n).filter(|o| !side.contains(o)).collect();
    side.iter()
        .flat_map(|a| other.iter().flat_map(move |b| [(*a, *b), (*b, *a)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_cuts_heal_independently() {
        let mut net = Net::default();
        let a = net.cut(isolate(0, 3));
        let b = net.cut(vec![(0, 1)]);
        assert!(net.is_cut(0, 1) && net.is_cut(2, 0) && !net.is_cut(1, 2));
        net.heal(a);
        assert!(net.is_cut(0, 1) && !net.is_cut(1, 0) && !net.is_cut(2, 0));
        net.heal(b);
        assert!(!net.is_cut(0, 1));
        assert_eq!(split(&[0], 3).len(), 4);
    }
}
