"""JSON Schemas for the structured-output tests: the shapes batch users extract, each keyword
llguidance implements that they reach for. Every string has a maxLength and every array a
maxItems, so even the random demo model sampling at temperature 1 closes them well before
max_tokens (numbers need no bound: a fraction's digits end at the first non-digit token).
`UNBOUNDED` is the exception by design: nothing stops a tree from growing.
"""

from __future__ import annotations

NAME = {"type": "string", "maxLength": 12}

SCHEMAS: dict[str, dict] = {
    "flat": {
        "type": "object",
        "properties": {"name": NAME, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["name", "age", "ok"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": NAME,
                    "address": {
                        "type": "object",
                        "properties": {"city": NAME, "zip": {"type": "string", "maxLength": 5}},
                        "required": ["city", "zip"],
                        "additionalProperties": False,
                    },
                },
                "required": ["name", "address"],
                "additionalProperties": False,
            }
        },
        "required": ["person"],
        "additionalProperties": False,
    },
    "enum_array": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue"]},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["tags"],
        "additionalProperties": False,
    },
    "objects_array": {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": NAME, "role": {"enum": ["host", "guest"]}},
                    "required": ["name", "role"],
                    "additionalProperties": False,
                },
                "minItems": 2,
                "maxItems": 3,
            }
        },
        "required": ["people"],
        "additionalProperties": False,
    },
    "root_enum": {"enum": ["positive", "negative", "neutral"]},
    "number_bounds": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "temp": {"type": "number", "exclusiveMinimum": -40, "exclusiveMaximum": 60},
        },
        "required": ["score", "temp"],
        "additionalProperties": False,
    },
    "integer_bounds": {
        "type": "object",
        "properties": {
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "delta": {"type": "integer", "minimum": -5, "maximum": 5},
        },
        "required": ["year", "delta"],
        "additionalProperties": False,
    },
    "optional": {
        "type": "object",
        "properties": {
            "title": NAME,
            "subtitle": NAME,
            "pages": {"type": "integer", "minimum": 1, "maximum": 999},
        },
        "required": ["title"],
        "additionalProperties": False,
    },
    "defs_ref": {
        "$defs": {
            "money": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number", "minimum": 0, "maximum": 100000},
                    "currency": {"enum": ["EUR", "USD", "GBP"]},
                },
                "required": ["amount", "currency"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"net": {"$ref": "#/$defs/money"}, "tax": {"$ref": "#/$defs/money"}},
        "required": ["net", "tax"],
        "additionalProperties": False,
    },
    "any_of": {
        "type": "object",
        "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0}, NAME]}},
        "required": ["id"],
        "additionalProperties": False,
    },
    "nullable": {
        "type": "object",
        "properties": {
            "middle_name": {"type": ["string", "null"], "maxLength": 8},
            "count": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]},
        },
        "required": ["middle_name", "count"],
        "additionalProperties": False,
    },
    "const": {
        "type": "object",
        "properties": {"version": {"const": 2}, "kind": {"const": "invoice"}},
        "required": ["version", "kind"],
        "additionalProperties": False,
    },
    "booleans": {
        "type": "object",
        "properties": {
            "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 3, "maxItems": 3}
        },
        "required": ["flags"],
        "additionalProperties": False,
    },
    "string_lengths": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 3, "maxLength": 3},
            "note": {"type": "string", "minLength": 1, "maxLength": 20},
        },
        "required": ["code", "note"],
        "additionalProperties": False,
    },
    "matrix": {
        "type": "object",
        "properties": {
            "rows": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "minItems": 2,
                "maxItems": 2,
            }
        },
        "required": ["rows"],
        "additionalProperties": False,
    },
    "pattern": {
        "type": "object",
        "properties": {"plate": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
        "required": ["plate"],
        "additionalProperties": False,
    },
    "date_format": {
        "type": "object",
        "properties": {"due": {"type": "string", "format": "date"}},
        "required": ["due"],
        "additionalProperties": False,
    },
    "mixed_enum": {
        "type": "object",
        "properties": {"value": {"enum": [1, 2.5, "three", None, True]}},
        "required": ["value"],
        "additionalProperties": False,
    },
    "tuple": {
        "type": "array",
        "prefixItems": [
            NAME,
            {"type": "integer", "minimum": 0, "maximum": 120},
            {"type": "boolean"},
        ],
        "items": False,
    },
    "all_of": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}},
            {"type": "object", "properties": {"a": {"maximum": 10}}, "required": ["a"]},
        ],
        "properties": {"a": {}},
        "additionalProperties": False,
    },
    "invoice": {
        "type": "object",
        "properties": {
            "number": {"type": "string", "maxLength": 10},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "description": {"type": "string", "maxLength": 16},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                        "unit_price": {"type": "number", "minimum": 0, "maximum": 10000},
                    },
                    "required": ["description", "quantity", "unit_price"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": 3,
            },
            "total": {"type": "number", "minimum": 0},
            "paid": {"type": "boolean"},
        },
        "required": ["number", "lines", "total", "paid"],
        "additionalProperties": False,
    },
    "chapters": {
        "type": "object",
        "properties": {
            "chapters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "start_s": {"type": "number", "minimum": 0, "maximum": 3600},
                        "end_s": {"type": "number", "minimum": 0, "maximum": 3600},
                        "title": {"type": "string", "maxLength": 24},
                    },
                    "required": ["start_s", "end_s", "title"],
                    "additionalProperties": False,
                },
                "maxItems": 4,
            }
        },
        "required": ["chapters"],
        "additionalProperties": False,
    },
    "action_items": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "owner": NAME,
                        "task": {"type": "string", "maxLength": 30},
                        "priority": {"enum": ["low", "medium", "high"]},
                        "done": {"type": "boolean"},
                    },
                    "required": ["owner", "task", "priority", "done"],
                    "additionalProperties": False,
                },
                "maxItems": 2,
            },
            "summary": {"type": "string", "maxLength": 40},
        },
        "required": ["items", "summary"],
        "additionalProperties": False,
    },
    "digit": {"type": "integer", "minimum": 0, "maximum": 9},
    "root_array": {
        "type": "array",
        "items": {"type": "integer", "minimum": -100, "maximum": 100},
        "minItems": 1,
        "maxItems": 5,
    },
}

# A tree of unbounded depth: at temperature 1 nothing makes it close; with max_tokens it must
# end as `length` with no json, never silently.
UNBOUNDED = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "maxLength": 4},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "minItems": 2},
            },
            "required": ["label", "children"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
