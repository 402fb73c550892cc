//! Avro schemas parsed from their JSON text into an arena of nodes with every name resolved.
//!
//! Named types (records, enums, fixed) get full names from their own or the enclosing
//! namespace; a reference by name points at the node it names, so recursive records are
//! supported (a record's name is registered before its fields are parsed). Logical types are
//! ignored: a value decodes as its underlying type.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::AvroError;

/// Index of a node in [`Schema::nodes`].
pub type NodeId = usize;

/// One Avro type.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed {
        name: Box<str>,
        size: usize,
    },
    Enum {
        name: Box<str>,
        symbols: Vec<Box<str>>,
    },
    Array(NodeId),
    Map(NodeId),
    Record {
        name: Box<str>,
        fields: Vec<Field>,
    },
    Union(Vec<NodeId>),
}

/// One field of a record.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: Box<str>,
    pub ty: NodeId,
}

/// A parsed Avro schema: `nodes[root]` is its top-level type.
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    pub nodes: Vec<Node>,
    pub root: NodeId,
}

impl Schema {
    /// Parse a schema's JSON text, resolving every named type.
    pub fn parse(json: &str) -> Result<Schema, AvroError> {
        let value: Json = serde_json::from_str(json)
            .map_err(|e| AvroError::Schema(format!("schema is not valid JSON: {e}")))?;
        let mut parser = Parser {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        let root = parser.parse(&value, "", "<root>")?;
        Ok(Schema {
            nodes: parser.nodes,
            root,
        })
    }

    /// The node with id `id`.
    #[inline]
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }
}

struct Parser {
    nodes: Vec<Node>,
    names: HashMap<String, NodeId>,
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn schema_err(path: &str, what: impl std::fmt::Display) -> AvroError {
    AvroError::Schema(format!("at {path}: {what}"))
}

impl Parser {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn primitive(name: &str) -> Option<Node> {
        Some(match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" => Node::Int,
            "long" => Node::Long,
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes,
            "string" => Node::String,
            _ => return None,
        })
    }

    fn parse(&mut self, v: &Json, ns: &str, path: &str) -> Result<NodeId, AvroError> {
        match v {
            Json::String(name) => self.reference(name, ns, path),
            Json::Array(branches) => {
                let mut ids = Vec::with_capacity(branches.len());
                for (i, b) in branches.iter().enumerate() {
                    let id = self.parse(b, ns, &format!("{path}[{i}]"))?;
                    if matches!(self.nodes[id], Node::Union(_)) {
                        return Err(schema_err(path, "a union may not contain a union"));
                    }
                    ids.push(id);
                }
                if ids.is_empty() {
                    return Err(schema_err(path, "a union needs at least one branch"));
                }
                Ok(self.push(Node::Union(ids)))
            }
            Json::Object(obj) => {
                let ty = obj
                    .get("type")
                    .ok_or_else(|| schema_err(path, "object without a \"type\""))?;
                let ty = match ty {
                    Json::String(s) => s.as_str(),
                    // {"type": {...}} or {"type": [...]}: a wrapped schema
                    other => return self.parse(other, ns, path),
                };
                match ty {
                    "record" | "error" => self.record(obj, ns, path),
                    "enum" => {
                        let (full, _) = self.fullname(obj, ns, path)?;
                        let symbols = obj
                            .get("symbols")
                            .and_then(Json::as_array)
                            .ok_or_else(|| schema_err(path, "enum without a \"symbols\" list"))?
                            .iter()
                            .map(|s| {
                                s.as_str()
                                    .map(Into::into)
                                    .ok_or_else(|| schema_err(path, "enum symbol is not a string"))
                            })
                            .collect::<Result<Vec<Box<str>>, _>>()?;
                        let id = self.push(Node::Enum {
                            name: full.clone().into(),
                            symbols,
                        });
                        self.define(full, id, path)?;
                        Ok(id)
                    }
                    "fixed" => {
                        let (full, _) = self.fullname(obj, ns, path)?;
                        let size = obj.get("size").and_then(Json::as_u64).ok_or_else(|| {
                            schema_err(path, "fixed without a non-negative \"size\"")
                        })?;
                        let id = self.push(Node::Fixed {
                            name: full.clone().into(),
                            size: size as usize,
                        });
                        self.define(full, id, path)?;
                        Ok(id)
                    }
                    "array" => {
                        let items = obj
                            .get("items")
                            .ok_or_else(|| schema_err(path, "array without \"items\""))?;
                        let id = self.parse(items, ns, &format!("{path}[]"))?;
                        Ok(self.push(Node::Array(id)))
                    }
                    "map" => {
                        let values = obj
                            .get("values")
                            .ok_or_else(|| schema_err(path, "map without \"values\""))?;
                        let id = self.parse(values, ns, &format!("{path}{{}}"))?;
                        Ok(self.push(Node::Map(id)))
                    }
                    prim => match Self::primitive(prim) {
                        // {"type": "long", "logicalType": ...}: the underlying type
                        Some(node) => Ok(self.push(node)),
                        None => self.reference(prim, ns, path),
                    },
                }
            }
            other => Err(schema_err(
                path,
                format!("expected a type name, object or union, got {other}"),
            )),
        }
    }

    fn reference(&mut self, name: &str, ns: &str, path: &str) -> Result<NodeId, AvroError> {
        if let Some(node) = Self::primitive(name) {
            return Ok(self.push(node));
        }
        let qualified = if name.contains('.') || ns.is_empty() {
            name.to_string()
        } else {
            format!("{ns}.{name}")
        };
        self.names
            .get(&qualified)
            .or_else(|| self.names.get(name))
            .copied()
            .ok_or_else(|| {
                schema_err(
                    path,
                    format!(
                        "unknown type {name:?} (not a primitive and not defined before this use)"
                    ),
                )
            })
    }

    /// The full name of a named type and the namespace its children inherit.
    fn fullname(
        &self,
        obj: &serde_json::Map<String, Json>,
        ns: &str,
        path: &str,
    ) -> Result<(String, String), AvroError> {
        let name = obj
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| schema_err(path, "named type without a string \"name\""))?;
        if PRIMITIVES.contains(&name) {
            return Err(schema_err(
                path,
                format!("{name:?} is a primitive type and cannot be redefined"),
            ));
        }
        let full = if name.contains('.') {
            name.to_string()
        } else {
            match obj.get("namespace").and_then(Json::as_str) {
                Some("") => name.to_string(),
                Some(own) => format!("{own}.{name}"),
                None if ns.is_empty() => name.to_string(),
                None => format!("{ns}.{name}"),
            }
        };
        let child_ns = full
            .rsplit_once('.')
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        Ok((full, child_ns))
    }

    fn define(&mut self, full: String, id: NodeId, path: &str) -> Result<(), AvroError> {
        if self.names.insert(full.clone(), id).is_some() {
            return Err(schema_err(path, format!("type {full:?} is defined twice")));
        }
        Ok(())
    }

    fn record(
        &mut self,
        obj: &serde_json::Map<String, Json>,
        ns: &str,
        path: &str,
    ) -> Result<NodeId, AvroError> {
        let (full, child_ns) = self.fullname(obj, ns, path)?;
        // Registered before the fields, so a field may refer to the record itself.
        let id = self.push(Node::Record {
            name: full.clone().into(),
            fields: Vec::new(),
        });
        self.define(full.clone(), id, path)?;
        let raw = obj.get("fields").and_then(Json::as_array).ok_or_else(|| {
            schema_err(path, format!("record {full:?} without a \"fields\" list"))
        })?;
        let mut fields: Vec<Field> = Vec::with_capacity(raw.len());
        for f in raw {
            let name = f.get("name").and_then(Json::as_str).ok_or_else(|| {
                schema_err(
                    path,
                    format!("record {full:?} has a field without a string \"name\""),
                )
            })?;
            if fields.iter().any(|g| &*g.name == name) {
                return Err(schema_err(
                    path,
                    format!("record {full:?} has two fields named {name:?}"),
                ));
            }
            let fpath = if path == "<root>" {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            let ty = f
                .get("type")
                .ok_or_else(|| schema_err(&fpath, "field without a \"type\""))?;
            let ty = self.parse(ty, &child_ns, &fpath)?;
            fields.push(Field {
                name: name.into(),
                ty,
            });
        }
        self.nodes[id] = Node::Record {
            name: full.into(),
            fields,
        };
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_namespaces() {
        let s = Schema::parse(
            r#"{"type":"record","name":"R","namespace":"a.b","fields":[
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
                {"name":"e2","type":"E"},
                {"name":"e3","type":"a.b.E"},
                {"name":"f","type":{"type":"fixed","name":"F","namespace":"c","size":4}},
                {"name":"f2","type":"c.F"},
                {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"next","type":["null","R"]}
            ]}"#,
        )
        .unwrap();
        let Node::Record { name, fields } = s.node(s.root) else {
            panic!()
        };
        assert_eq!(&**name, "a.b.R");
        assert_eq!(fields[0].ty, fields[1].ty);
        assert_eq!(fields[0].ty, fields[2].ty);
        assert_eq!(fields[3].ty, fields[4].ty);
        assert_eq!(s.node(fields[5].ty), &Node::Long);
        let Node::Union(b) = s.node(fields[6].ty) else {
            panic!()
        };
        assert_eq!(b[1], s.root);
    }

    #[test]
    fn refuses_bad_schemas() {
        for bad in [
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Nope"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"a","type":"int"}]}"#,
            r#"[["int"]]"#,
            r#"{"type":"enum","name":"E"}"#,
            r#"{"type":"fixed","name":"F","size":-1}"#,
            r#"{"type":"record","name":"int","fields":[]}"#,
            r#"not json"#,
        ] {
            let err = Schema::parse(bad).unwrap_err();
            assert!(matches!(err, AvroError::Schema(_)), "{bad}: {err}");
        }
    }
}
