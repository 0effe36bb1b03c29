//! One tree ensemble flattened for evaluation: every tree's nodes in one array
//! of 16-byte nodes, leaves pointing into one weight array, so a row walks
//! O(depth) nodes per tree. Batches run tree by tree over all rows, so a tree
//! stays in cache while the batch passes through it.
//!
//! Scores are summed in `f32`, tree by tree in the file's order, and finished
//! (base values, binary special cases, post transform) exactly as
//! onnxruntime's CPU kernels do, since models are exported and checked
//! against onnxruntime.

/// How a branch node compares the feature with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `x <= t`
    Leq,
    /// `x < t`
    Lt,
    /// `x >= t`
    Gte,
    /// `x > t`
    Gt,
    /// `x == t`
    Eq,
    /// `x != t`
    Neq,
    /// `x` is one of a set of values (`TreeEnsemble`'s `BRANCH_MEMBER`).
    Member,
}

impl Mode {
    fn code(self) -> u32 {
        match self {
            Mode::Leq => 0,
            Mode::Lt => 1,
            Mode::Gte => 2,
            Mode::Gt => 3,
            Mode::Eq => 4,
            Mode::Neq => 5,
            Mode::Member => 6,
        }
    }
}

/// What happens to the aggregated scores before they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    /// Unchanged.
    None,
    /// `1 / (1 + e^-x)` per score.
    Logistic,
    /// Softmax over the scores.
    Softmax,
    /// Softmax that leaves zero scores at zero.
    SoftmaxZero,
    /// The inverse of the normal CDF, per score.
    Probit,
}

/// How the trees' leaf weights are combined (regressors; classifiers sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Sum of the trees' weights.
    Sum,
    /// Sum divided by the number of trees.
    Average,
    /// Smallest weight.
    Min,
    /// Largest weight.
    Max,
}

/// One node as the exporter describes it, before flattening.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The tree it belongs to.
    pub tree: i64,
    /// Its ID inside the tree.
    pub id: i64,
    /// Feature compared (branches).
    pub feature: i64,
    /// Threshold (branches).
    pub value: f32,
    /// None for a leaf.
    pub mode: Option<Mode>,
    /// Child ID when the comparison holds (branches).
    pub true_id: i64,
    /// Child ID when it does not (branches).
    pub false_id: i64,
    /// A missing (NaN) feature takes the true branch.
    pub missing_true: bool,
    /// Set members (`Member` branches only).
    pub members: Vec<f32>,
}

impl NodeSpec {
    /// A leaf: the node a walk ends at; its weights are given separately.
    pub fn leaf(tree: i64, id: i64) -> Self {
        NodeSpec {
            tree,
            id,
            feature: 0,
            value: 0.0,
            mode: None,
            true_id: 0,
            false_id: 0,
            missing_true: false,
            members: Vec::new(),
        }
    }
}

/// One weight a leaf adds to one class or target.
#[derive(Debug, Clone, Copy)]
pub struct LeafWeight {
    /// The leaf's tree.
    pub tree: i64,
    /// The leaf's ID inside its tree.
    pub node: i64,
    /// Class or target index.
    pub target: i64,
    /// The weight.
    pub weight: f32,
}

/// What a classifier adds on top of the scores.
#[derive(Debug, Clone)]
pub struct ClassifierSpec {
    /// `classlabels_int64s`.
    pub labels: Vec<i64>,
}

/// Everything an ensemble operator's attributes say, in one form for the
/// classifier, the regressor and `TreeEnsemble`.
#[derive(Debug, Clone)]
pub struct EnsembleSpec {
    /// Nodes of every tree.
    pub nodes: Vec<NodeSpec>,
    /// Leaf weights.
    pub weights: Vec<LeafWeight>,
    /// Classes or targets.
    pub targets: usize,
    /// Base values (empty, one, or one per class / target).
    pub base_values: Vec<f32>,
    /// Post transform.
    pub post_transform: PostTransform,
    /// Aggregation (classifiers: `Sum`).
    pub aggregate: Aggregate,
    /// Some for a classifier.
    pub classifier: Option<ClassifierSpec>,
}

const LEAF: u32 = 1 << 31;
const MISSING_TRUE: u32 = 1 << 30;
const MODE_SHIFT: u32 = 27;
const MODE_MASK: u32 = 0b111 << MODE_SHIFT;
const FEATURE_MASK: u32 = (1 << MODE_SHIFT) - 1;

/// A flattened node. Branch: `meta` = flags, mode and feature; `a` / `b` the
/// true / false child's index. Leaf: `meta` = `LEAF` (mode `Leq`, feature 0),
/// `value` NaN, so its comparison always fails and `b`, its own index, keeps a
/// finished walk in place: every row of a batch then takes the same number of
/// steps through a tree, without a branch on "is this a leaf"; `a` indexes
/// `leaves`. A `Member` branch keeps its set's range in `members` at index
/// `value.to_bits()`.
#[derive(Debug, Clone, Copy)]
struct Node {
    value: f32,
    meta: u32,
    a: u32,
    b: u32,
}

/// A tree ensemble ready to run.
#[derive(Debug)]
pub struct Ensemble {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// Per tree: branch levels on its longest path (depth - 1).
    steps: Vec<u32>,
    /// Every branch is `x <= t` (the common export): a faster walk.
    all_leq: bool,
    /// Per leaf: its weights' range in `weights`.
    leaves: Vec<(u32, u32)>,
    weights: Vec<(u32, f32)>,
    members: Vec<(u32, u32)>,
    member_values: Vec<f32>,
    targets: usize,
    base_values: Vec<f32>,
    post_transform: PostTransform,
    aggregate: Aggregate,
    classifier: Option<Classifier>,
    /// Smallest input width every feature index fits in.
    width: usize,
    depth: usize,
}

#[derive(Debug)]
struct Classifier {
    labels: Vec<i64>,
    /// Two classes and every leaf weight on the same one: onnxruntime then
    /// derives the second probability from the first.
    binary_case: bool,
    all_positive: bool,
}

impl Ensemble {
    /// Flattens and checks `spec`: every child exists in its own tree, every
    /// tree has one root and no cycle, every weight sits on a leaf and names a
    /// class or target below `targets`.
    ///
    /// # Errors
    /// What is wrong, in words naming the tree and node.
    pub fn build(spec: EnsembleSpec) -> Result<Ensemble, String> {
        use std::collections::{BTreeMap, BTreeSet, HashMap};
        if spec.targets == 0 {
            return Err("the ensemble declares no class or target".into());
        }
        if !spec.base_values.is_empty()
            && spec.base_values.len() != 1
            && spec.base_values.len() != spec.targets
        {
            return Err(format!(
                "base_values has {} values; expected none, one or {} (one per class or target)",
                spec.base_values.len(),
                spec.targets
            ));
        }
        // Index every node by (tree, id), keeping the exporter's tree order.
        let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(spec.nodes.len());
        let mut trees: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, n) in spec.nodes.iter().enumerate() {
            if index.insert((n.tree, n.id), i).is_some() {
                return Err(format!("tree {} has two nodes with ID {}", n.tree, n.id));
            }
            trees.entry(n.tree).or_default().push(i);
        }
        let mut leaf_weights: HashMap<usize, Vec<(u32, f32)>> = HashMap::new();
        for w in &spec.weights {
            let at = *index.get(&(w.tree, w.node)).ok_or_else(|| {
                format!(
                    "a weight names node {} of tree {}, which does not exist",
                    w.node, w.tree
                )
            })?;
            if spec.nodes[at].mode.is_some() {
                return Err(format!(
                    "a weight sits on node {} of tree {}, which is a branch, not a leaf",
                    w.node, w.tree
                ));
            }
            let target = usize::try_from(w.target)
                .ok()
                .filter(|t| *t < spec.targets)
                .ok_or_else(|| {
                    format!(
                        "a weight of tree {} names class/target {}; there are {}",
                        w.tree, w.target, spec.targets
                    )
                })?;
            leaf_weights
                .entry(at)
                .or_default()
                .push((u32::try_from(target).unwrap_or(u32::MAX), w.weight));
        }

        let mut nodes = Vec::with_capacity(spec.nodes.len());
        let mut roots = Vec::with_capacity(trees.len());
        let mut steps = Vec::with_capacity(trees.len());
        let mut leaves = Vec::new();
        let mut all_leq = true;
        let mut weights = Vec::with_capacity(spec.weights.len());
        let mut members = Vec::new();
        let mut member_values = Vec::new();
        let mut width = 0usize;
        let mut depth = 0usize;
        let too_many = || "the ensemble has more than 2^31 nodes".to_owned();
        for (tree, list) in &trees {
            let children: BTreeSet<i64> = list
                .iter()
                .filter(|i| spec.nodes[**i].mode.is_some())
                .flat_map(|i| [spec.nodes[*i].true_id, spec.nodes[*i].false_id])
                .collect();
            let tops: Vec<usize> = list
                .iter()
                .copied()
                .filter(|i| !children.contains(&spec.nodes[*i].id))
                .collect();
            let [root] = tops[..] else {
                return Err(format!(
                    "tree {tree} has {} nodes that are no node's child; a tree needs exactly one root",
                    tops.len()
                ));
            };
            // Lay the tree out depth first from its root, so a walk moves
            // forward through memory and a cycle or shared child is caught.
            let base = nodes.len();
            let mut local: HashMap<usize, usize> = HashMap::new();
            let mut order = Vec::with_capacity(list.len());
            let mut stack = vec![(root, 1usize)];
            let mut tree_depth = 1usize;
            while let Some((at, level)) = stack.pop() {
                if local.insert(at, base + order.len()).is_some() {
                    return Err(format!(
                        "tree {tree}: node {} is reached twice (a cycle or a shared child)",
                        spec.nodes[at].id
                    ));
                }
                order.push(at);
                tree_depth = tree_depth.max(level);
                let n = &spec.nodes[at];
                if n.mode.is_some() {
                    for child in [n.false_id, n.true_id] {
                        let c = *index.get(&(*tree, child)).ok_or_else(|| {
                            format!(
                                "tree {tree}: node {} points to node {child}, which does not exist",
                                n.id
                            )
                        })?;
                        stack.push((c, level + 1));
                    }
                }
            }
            roots.push(u32::try_from(base).map_err(|_| too_many())?);
            depth = depth.max(tree_depth);
            steps.push(u32::try_from(tree_depth - 1).map_err(|_| too_many())?);
            for at in order {
                let n = &spec.nodes[at];
                let node = match n.mode {
                    None => {
                        let first = u32::try_from(weights.len()).map_err(|_| too_many())?;
                        let own = leaf_weights.remove(&at).unwrap_or_default();
                        let count = u32::try_from(own.len()).map_err(|_| too_many())?;
                        weights.extend(own);
                        let leaf = u32::try_from(leaves.len()).map_err(|_| too_many())?;
                        leaves.push((first, count));
                        Node {
                            value: f32::NAN,
                            meta: LEAF,
                            a: leaf,
                            b: u32::try_from(nodes.len()).map_err(|_| too_many())?,
                        }
                    }
                    Some(mode) => {
                        all_leq &= mode == Mode::Leq;
                        let feature = u32::try_from(n.feature)
                            .ok()
                            .filter(|f| *f <= FEATURE_MASK)
                            .ok_or_else(|| {
                                format!("tree {tree}: node {} uses feature {}", n.id, n.feature)
                            })?;
                        width = width.max(feature as usize + 1);
                        let child = |id: i64| {
                            index
                                .get(&(*tree, id))
                                .and_then(|i| local.get(i))
                                .and_then(|i| u32::try_from(*i).ok())
                                .ok_or_else(too_many)
                        };
                        let mut value = n.value;
                        if mode == Mode::Member {
                            let start =
                                u32::try_from(member_values.len()).map_err(|_| too_many())?;
                            member_values.extend(&n.members);
                            let len = u32::try_from(n.members.len()).map_err(|_| too_many())?;
                            value = f32::from_bits(
                                u32::try_from(members.len()).map_err(|_| too_many())?,
                            );
                            members.push((start, len));
                        }
                        Node {
                            value,
                            meta: feature
                                | (mode.code() << MODE_SHIFT)
                                | if n.missing_true { MISSING_TRUE } else { 0 },
                            a: child(n.true_id)?,
                            b: child(n.false_id)?,
                        }
                    }
                };
                nodes.push(node);
            }
        }
        if roots.is_empty() {
            return Err("the ensemble has no tree".into());
        }
        let classifier = spec.classifier.map(|c| {
            let classes: BTreeSet<u32> = weights.iter().map(|(t, _)| *t).collect();
            Classifier {
                binary_case: spec.targets == 2 && classes.len() == 1,
                all_positive: weights.iter().all(|(_, w)| *w >= 0.0),
                labels: c.labels,
            }
        });
        if let Some(c) = &classifier
            && c.labels.len() != spec.targets
        {
            return Err(format!(
                "{} class labels for {} classes",
                c.labels.len(),
                spec.targets
            ));
        }
        Ok(Ensemble {
            nodes,
            roots,
            steps,
            all_leq,
            leaves,
            weights,
            members,
            member_values,
            targets: spec.targets,
            base_values: spec.base_values,
            post_transform: spec.post_transform,
            aggregate: spec.aggregate,
            classifier,
            // A walk reads feature 0 at a leaf: rows need at least one.
            width: width.max(1),
            depth,
        })
    }

    /// Smallest row width the ensemble can read.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of trees.
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// Deepest root-to-leaf path, in nodes.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Scores (and labels, for a classifier) written per row.
    pub fn targets(&self) -> usize {
        self.targets
    }

    /// Whether it is a classifier (it then also writes labels).
    pub fn is_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    /// One step from node `i` for a row whose feature values are `x`.
    #[inline(always)]
    fn step(&self, i: u32, x: &[f32]) -> u32 {
        let n = &self.nodes[i as usize];
        let v = x[(n.meta & FEATURE_MASK) as usize];
        let holds = match (n.meta & MODE_MASK) >> MODE_SHIFT {
            0 => v <= n.value,
            1 => v < n.value,
            2 => v >= n.value,
            3 => v > n.value,
            4 => v == n.value,
            5 => v != n.value,
            _ => self.is_member(n, v),
        } | (n.meta & MISSING_TRUE != 0 && v.is_nan());
        if holds { n.a } else { n.b }
    }

    /// `step` when every branch is `x <= t`: no dispatch on the mode, and a
    /// select rather than a jump.
    #[inline(always)]
    fn step_leq(&self, i: u32, x: &[f32]) -> u32 {
        let n = &self.nodes[i as usize];
        let v = x[(n.meta & FEATURE_MASK) as usize];
        let holds = (v <= n.value) | ((n.meta & MISSING_TRUE != 0) & v.is_nan());
        if holds { n.a } else { n.b }
    }

    fn is_member(&self, n: &Node, v: f32) -> bool {
        let (start, len) = self.members[n.value.to_bits() as usize];
        self.member_values[start as usize..(start + len) as usize].contains(&v)
    }

    /// Runs `rows` rows of `width` features each (`x.len() == rows * width`,
    /// `width >= self.width()`); writes `rows * targets` scores and, for a
    /// classifier, `rows` labels.
    pub fn run(
        &self,
        x: &[f32],
        rows: usize,
        width: usize,
        scores: &mut [f32],
        labels: &mut [i64],
    ) {
        let t = self.targets;
        let mut sums = vec![0f32; rows * t];
        let mut has = vec![false; rows * t];
        // Tree by tree over the batch: the tree stays in cache, and each row
        // still adds its trees' weights in the file's order. Rows walk a tree
        // LANES at a time, in step, so their loads overlap.
        const LANES: usize = 8;
        for (root, steps) in self.roots.iter().zip(&self.steps) {
            let mut first = 0;
            while first < rows {
                let lanes = (rows - first).min(LANES);
                let mut at = [*root; LANES];
                let row = |k: usize| &x[(first + k) * width..(first + k + 1) * width];
                if lanes == 1 {
                    // A lone row stops at its leaf instead of idling there.
                    let x = row(0);
                    while self.nodes[at[0] as usize].meta & LEAF == 0 {
                        at[0] = if self.all_leq {
                            self.step_leq(at[0], x)
                        } else {
                            self.step(at[0], x)
                        };
                    }
                } else if self.all_leq {
                    for _ in 0..*steps {
                        for (k, i) in at[..lanes].iter_mut().enumerate() {
                            *i = self.step_leq(*i, row(k));
                        }
                    }
                } else {
                    for _ in 0..*steps {
                        for (k, i) in at[..lanes].iter_mut().enumerate() {
                            *i = self.step(*i, row(k));
                        }
                    }
                }
                for (k, i) in at[..lanes].iter().enumerate() {
                    let r = first + k;
                    let (start, count) = self.leaves[self.nodes[*i as usize].a as usize];
                    let own = &self.weights[start as usize..(start + count) as usize];
                    let (s, h) = (&mut sums[r * t..(r + 1) * t], &mut has[r * t..(r + 1) * t]);
                    for (target, w) in own {
                        let k = *target as usize;
                        match self.aggregate {
                            Aggregate::Sum | Aggregate::Average => s[k] += w,
                            Aggregate::Min => s[k] = if h[k] { s[k].min(*w) } else { *w },
                            Aggregate::Max => s[k] = if h[k] { s[k].max(*w) } else { *w },
                        }
                        h[k] = true;
                    }
                }
                first += lanes;
            }
        }
        for r in 0..rows {
            let s = &mut sums[r * t..(r + 1) * t];
            let h = &mut has[r * t..(r + 1) * t];
            let out = &mut scores[r * t..(r + 1) * t];
            match &self.classifier {
                Some(c) => labels[r] = self.finish_classifier(c, s, h, out),
                None => self.finish_regressor(s, h, out),
            }
        }
    }

    fn finish_regressor(&self, s: &mut [f32], h: &[bool], out: &mut [f32]) {
        let n_trees = self.roots.len() as f32;
        if self.targets == 1 {
            let origin = if self.base_values.len() == 1 {
                self.base_values[0]
            } else {
                0.0
            };
            let v = match self.aggregate {
                Aggregate::Sum => s[0] + origin,
                Aggregate::Average => s[0] / n_trees + origin,
                Aggregate::Min | Aggregate::Max => {
                    if h[0] {
                        s[0] + origin
                    } else {
                        origin
                    }
                }
            };
            out[0] = if self.post_transform == PostTransform::Probit {
                probit(v)
            } else {
                v
            };
            return;
        }
        let per_target = self.base_values.len() == self.targets;
        for k in 0..self.targets {
            let base = if per_target { self.base_values[k] } else { 0.0 };
            s[k] = match self.aggregate {
                Aggregate::Sum => s[k] + base,
                Aggregate::Average => s[k] / n_trees + base,
                Aggregate::Min | Aggregate::Max => base + if h[k] { s[k] } else { 0.0 },
            };
        }
        transform(s, self.post_transform);
        out.copy_from_slice(s);
    }

    /// The label; writes the class scores to `out`.
    fn finish_classifier(
        &self,
        c: &Classifier,
        s: &mut [f32],
        h: &mut [bool],
        out: &mut [f32],
    ) -> i64 {
        let base = &self.base_values;
        if self.targets > 2 {
            for (k, b) in base.iter().enumerate() {
                if h[k] {
                    s[k] += b;
                } else {
                    h[k] = true;
                    s[k] = *b;
                }
            }
            let mut best: Option<(usize, f32)> = None;
            for k in 0..self.targets {
                if h[k] && best.is_none_or(|(_, w)| s[k] > w) {
                    best = Some((k, s[k]));
                }
            }
            transform(s, self.post_transform);
            out.copy_from_slice(s);
            return c.labels[best.map_or(0, |(k, _)| k)];
        }
        let mut second = None;
        let mut one_score = false;
        match base.len() {
            2 => {
                if h[1] {
                    // onnxruntime's reading of two base values with weights on
                    // the second class: base[0] unused, class 1 = base[1] + class 0.
                    s[1] = base[1] + s[0];
                    s[0] = -s[1];
                    h[1] = true;
                } else {
                    s[1] += base[1];
                    s[0] += base[0];
                }
            }
            1 => {
                s[0] += base[0];
                one_score = !h[1];
            }
            _ => {
                second = Some(SecondClass::NegativeWins);
                one_score = !h[1];
            }
        }
        let positive = if !one_score && h[1] {
            s[1]
        } else if h[0] {
            s[0]
        } else {
            0.0
        };
        let label = if c.binary_case {
            let (wins, kind) = match (c.all_positive, positive) {
                (true, p) if p > 0.5 => (true, SecondClass::Probability),
                (true, _) => (false, SecondClass::Probability),
                (false, p) if p > 0.0 => (true, SecondClass::PositiveWins),
                (false, _) => (false, SecondClass::NegativeWins),
            };
            second = Some(kind);
            c.labels[usize::from(wins)]
        } else {
            i64::from(positive > 0.0)
        };
        if one_score {
            let v = s[0];
            let (first, other) = match (self.post_transform, second) {
                (PostTransform::Probit, _) => (probit(v), 0.0),
                (_, Some(SecondClass::Probability)) => (1.0 - v, v),
                (PostTransform::Logistic, Some(_)) => (logistic(-v), logistic(v)),
                (_, Some(SecondClass::PositiveWins)) => (-v, v),
                (_, Some(SecondClass::NegativeWins)) => (v, -v),
                (_, None) => (v, 0.0),
            };
            out[0] = first;
            out[1] = other;
        } else {
            transform(s, self.post_transform);
            out.copy_from_slice(s);
        }
        label
    }
}

/// How onnxruntime fills the second probability of a binary classifier that
/// scored one class.
#[derive(Debug, Clone, Copy)]
enum SecondClass {
    /// The score is a probability: `[1 - p, p]`.
    Probability,
    /// Mixed-sign weights, positive class won.
    PositiveWins,
    /// Mixed-sign weights, negative class won.
    NegativeWins,
}

fn transform(s: &mut [f32], post: PostTransform) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => s.iter_mut().for_each(|v| *v = logistic(*v)),
        PostTransform::Probit => s.iter_mut().for_each(|v| *v = probit(*v)),
        PostTransform::Softmax => {
            let max = s.iter().copied().fold(-f32::MAX, f32::max);
            let mut sum = 0.0;
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            s.iter_mut().for_each(|v| *v /= sum);
        }
        PostTransform::SoftmaxZero => {
            let max = s.iter().copied().fold(-f32::MAX, f32::max);
            let scale = (-max).exp();
            let mut sum = 0.0;
            for v in s.iter_mut() {
                if v.abs() > 1e-7 {
                    *v = (*v - max).exp();
                    sum += *v;
                } else {
                    *v *= scale;
                }
            }
            s.iter_mut().for_each(|v| *v /= sum);
        }
    }
}

/// The logistic function, computed on `|x|` so large inputs do not overflow.
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

/// `sqrt(2) * erfinv(2x - 1)` with the same closed-form approximation of
/// `erfinv` onnxruntime uses, so PROBIT outputs agree with it.
pub fn probit(x: f32) -> f32 {
    let y = 2.0 * x - 1.0;
    let sign = if y < 0.0 { -1.0 } else { 1.0 };
    let z = (1.0 - y) * (1.0 + y);
    let ln = z.ln();
    let a = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * ln;
    let b = ln / 0.147;
    std::f32::consts::SQRT_2 * sign * (-a + (a * a - b).sqrt()).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(tree: i64, id: i64, feature: i64, value: f32, t: i64, f: i64) -> NodeSpec {
        NodeSpec {
            tree,
            id,
            feature,
            value,
            mode: Some(Mode::Leq),
            true_id: t,
            false_id: f,
            missing_true: false,
            members: vec![],
        }
    }

    fn leaf(tree: i64, id: i64) -> NodeSpec {
        NodeSpec::leaf(tree, id)
    }

    fn weight(tree: i64, node: i64, target: i64, weight: f32) -> LeafWeight {
        LeafWeight {
            tree,
            node,
            target,
            weight,
        }
    }

    /// Two stumps on features 0 and 1, as a regressor summing their leaves.
    fn stumps(aggregate: Aggregate, missing_true: bool) -> EnsembleSpec {
        let mut b0 = branch(0, 0, 0, 0.5, 1, 2);
        b0.missing_true = missing_true;
        EnsembleSpec {
            nodes: vec![
                b0,
                leaf(0, 1),
                leaf(0, 2),
                branch(1, 0, 1, 0.0, 1, 2),
                leaf(1, 1),
                leaf(1, 2),
            ],
            weights: vec![
                weight(0, 1, 0, 1.0),
                weight(0, 2, 0, 2.0),
                weight(1, 1, 0, 10.0),
                weight(1, 2, 0, 20.0),
            ],
            targets: 1,
            base_values: vec![0.25],
            post_transform: PostTransform::None,
            aggregate,
            classifier: None,
        }
    }

    fn run1(e: &Ensemble, row: &[f32]) -> f32 {
        let mut out = vec![0.0; e.targets()];
        let mut labels = vec![0; 1];
        e.run(row, 1, row.len(), &mut out, &mut labels);
        out[0]
    }

    #[test]
    fn walks_each_tree_to_one_leaf_and_aggregates() {
        let sum = Ensemble::build(stumps(Aggregate::Sum, false)).expect("valid");
        assert_eq!(run1(&sum, &[0.5, 0.0]), 11.25, "<= takes the true branch");
        assert_eq!(run1(&sum, &[0.6, 1.0]), 22.25);
        let avg = Ensemble::build(stumps(Aggregate::Average, false)).expect("valid");
        assert_eq!(run1(&avg, &[0.6, 1.0]), 11.25);
        let max = Ensemble::build(stumps(Aggregate::Max, false)).expect("valid");
        assert_eq!(run1(&max, &[0.6, -1.0]), 10.25);
        let min = Ensemble::build(stumps(Aggregate::Min, false)).expect("valid");
        assert_eq!(run1(&min, &[0.6, -1.0]), 2.25);
        assert_eq!(sum.trees(), 2);
        assert_eq!(sum.depth(), 2);
        assert_eq!(sum.width(), 2);
    }

    #[test]
    fn a_missing_feature_follows_its_track() {
        let plain = Ensemble::build(stumps(Aggregate::Sum, false)).expect("valid");
        assert_eq!(run1(&plain, &[f32::NAN, 0.0]), 12.25, "NaN <= t is false");
        let tracked = Ensemble::build(stumps(Aggregate::Sum, true)).expect("valid");
        assert_eq!(
            run1(&tracked, &[f32::NAN, 0.0]),
            11.25,
            "tracked NaN goes true"
        );
    }

    #[test]
    fn broken_trees_are_refused_with_the_node_named() {
        let mut spec = stumps(Aggregate::Sum, false);
        spec.nodes.remove(1);
        spec.weights.remove(0);
        let e = Ensemble::build(spec).expect_err("dangling child");
        assert!(e.contains("tree 0: node 0 points to node 1"), "{e}");

        let mut spec = stumps(Aggregate::Sum, false);
        spec.nodes[0].false_id = 1;
        let e = Ensemble::build(spec).expect_err("shared child");
        assert!(e.contains("exactly one root"), "{e}");

        let mut spec = stumps(Aggregate::Sum, false);
        spec.weights.push(weight(0, 0, 0, 1.0));
        let e = Ensemble::build(spec).expect_err("weight on a branch");
        assert!(e.contains("is a branch"), "{e}");
    }

    #[test]
    fn binary_boosted_classifier_matches_onnxruntime_convention() {
        // One class carries every weight, mixed signs, one base value,
        // LOGISTIC: as skl2onnx exports GradientBoostingClassifier.
        let mut spec = stumps(Aggregate::Sum, false);
        spec.weights = vec![
            weight(0, 1, 0, -1.0),
            weight(0, 2, 0, 0.5),
            weight(1, 1, 0, -0.25),
            weight(1, 2, 0, 0.75),
        ];
        spec.targets = 2;
        spec.base_values = vec![0.1];
        spec.post_transform = PostTransform::Logistic;
        spec.classifier = Some(ClassifierSpec { labels: vec![0, 1] });
        let e = Ensemble::build(spec).expect("valid");
        let mut out = [0.0; 2];
        let mut label = [0; 1];
        e.run(&[0.9, 1.0], 1, 2, &mut out, &mut label);
        let raw: f32 = 0.5 + 0.75 + 0.1;
        assert_eq!(label[0], 1);
        assert!((out[1] - logistic(raw)).abs() < 1e-7 && (out[0] - logistic(-raw)).abs() < 1e-7);
        e.run(&[0.1, -1.0], 1, 2, &mut out, &mut label);
        assert_eq!(label[0], 0, "negative raw score: class 0");
    }

    #[test]
    fn probit_inverts_the_normal_cdf() {
        assert!(probit(0.5).abs() < 1e-6);
        assert!((probit(0.975) - 1.96).abs() < 0.01);
        assert!((logistic(0.0) - 0.5).abs() < 1e-7);
    }
}
