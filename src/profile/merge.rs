//! `extends` merging, on TOML values: the child's scalars win, tables merge key by key,
//! lists append, and a list entry "-name" removes "name" from what was inherited.
//! The lists of `[services]` are sets: appending a unit already listed changes nothing.

use toml::{Table, Value};

/// Top-level tables whose lists are sets (union instead of append).
const UNION_TABLES: &[&str] = &["services", "ssh"];

/// Merges `child` into `acc` (which holds everything inherited so far).
pub fn merge(acc: &mut Table, child: Table) {
    merge_with(acc, child, None);
}

/// `union`: the lists below are sets (inside one of [`UNION_TABLES`]).
fn merge_with(acc: &mut Table, child: Table, union: Option<bool>) {
    for (key, value) in child {
        let union = union.unwrap_or(UNION_TABLES.contains(&key.as_str()));
        match (acc.get_mut(&key), value) {
            (Some(Value::Table(a)), Value::Table(c)) => merge_with(a, c, Some(union)),
            (Some(Value::Array(a)), Value::Array(c)) => append(a, c, union),
            (None, Value::Array(c)) => {
                let mut a = Vec::new();
                append(&mut a, c, union);
                acc.insert(key, Value::Array(a));
            }
            (None, Value::Table(c)) => {
                let mut a = Table::new();
                merge_with(&mut a, c, Some(union));
                acc.insert(key, Value::Table(a));
            }
            (_, v) => {
                acc.insert(key, v);
            }
        }
    }
}

fn append(acc: &mut Vec<Value>, child: Vec<Value>, union: bool) {
    for v in child {
        match v.as_str().and_then(|s| s.strip_prefix('-')) {
            Some(name) => acc.retain(|x| x.as_str() != Some(name)),
            None if union && acc.contains(&v) => {}
            None => acc.push(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Table {
        s.parse().unwrap()
    }

    #[test]
    fn child_scalars_win_tables_merge_lists_append() {
        let mut acc = t("a = 1\n[x]\nk = 'p'\nkeep = true\n[p]\nl = ['a', 'b']");
        merge(&mut acc, t("a = 2\n[x]\nk = 'c'\n[p]\nl = ['c']"));
        assert_eq!(
            acc,
            t("a = 2\n[x]\nk = 'c'\nkeep = true\n[p]\nl = ['a', 'b', 'c']")
        );
    }

    #[test]
    fn dash_entry_removes_inherited_item() {
        let mut acc = t("[p]\nl = ['vim', 'curl']");
        merge(&mut acc, t("[p]\nl = ['-vim', 'jq']"));
        assert_eq!(acc, t("[p]\nl = ['curl', 'jq']"));
    }

    #[test]
    fn removal_in_a_root_profile_leaves_no_trace() {
        let mut acc = Table::new();
        merge(&mut acc, t("[p]\nl = ['-vim', 'jq']"));
        assert_eq!(acc, t("[p]\nl = ['jq']"));
    }

    #[test]
    fn services_lists_are_unions_other_lists_append() {
        let mut acc = t("[services]\nenable = ['a', 'b']\n[packages]\ninclude = ['x']");
        merge(
            &mut acc,
            t("[services]\nenable = ['b', 'c', '-a']\n[packages]\ninclude = ['x']"),
        );
        assert_eq!(
            acc,
            t("[services]\nenable = ['b', 'c']\n[packages]\ninclude = ['x', 'x']")
        );
    }

    #[test]
    fn users_append_across_extends() {
        let mut acc = t("[[user]]\nname = 'a'");
        merge(&mut acc, t("[[user]]\nname = 'b'"));
        assert_eq!(acc["user"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn arrays_of_tables_append() {
        let mut acc = t("[[overlay]]\npath = 'a'");
        merge(&mut acc, t("[[overlay]]\npath = 'b'"));
        let paths: Vec<_> = acc["overlay"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["a", "b"]);
    }
}
