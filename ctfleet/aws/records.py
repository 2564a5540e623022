"""Records in DynamoDB: values to and from DynamoDB's types, and a thin table adapter.

The records hold no PHI: study keys are HMACs, reasons are codes. Which writes
are allowed in which state is the repositories' business (:mod:`.repositories`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from ctfleet.settings import TableSpec

from .failures import sorted_errors

_ser = TypeSerializer()
_de = TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    """Python -> DynamoDB-safe values (floats become Decimals, tuples lists)."""
    if isinstance(value, float):
        return Decimal(repr(round(value, 6)))
    if isinstance(value, dict):
        return {str(k): _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(_to_dynamo(v)) for k, v in item.items() if v is not None}


def deserialize(image: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_dynamo(_de.deserialize(v)) for k, v in image.items()}


class Table:
    """A thin adapter over one DynamoDB table with a string partition key.

    Only the repositories (:mod:`ctfleet.aws.repositories`) write conditions;
    a lost condition raises :class:`~ctfleet.errors.Conflict`.

    Parameters
    ----------
    dynamodb : boto3 DynamoDB client
    spec : TableSpec
        The table's name, key and indexes (from :mod:`ctfleet.settings`).
    """

    def __init__(self, dynamodb: Any, spec: TableSpec) -> None:
        self._db = dynamodb
        self.spec = spec
        self.name = spec.name
        self.key = spec.partition_key

    def get(self, key_value: str, *, consistent: bool = True) -> dict[str, Any] | None:
        with sorted_errors(f"dynamodb:{self.name}"):
            out = self._db.get_item(TableName=self.name, Key={self.key: {"S": key_value}}, ConsistentRead=consistent)
        item = out.get("Item")
        return deserialize(item) if item else None

    def put_new(self, item: dict[str, Any]) -> None:
        """Create the item; :class:`~ctfleet.errors.Conflict` if it exists already."""
        self._write(
            lambda: self._db.put_item(
                TableName=self.name,
                Item=serialize(item),
                ConditionExpression="attribute_not_exists(#k)",
                ExpressionAttributeNames={"#k": self.key},
            )
        )

    def put(self, item: dict[str, Any], *, condition: str | None = None,
            names: dict[str, str] | None = None, values: dict[str, Any] | None = None) -> None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": serialize(item)}
        if condition:
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if values:
            kwargs["ExpressionAttributeValues"] = serialize(values)
        self._write(lambda: self._db.put_item(**kwargs))

    def update(
        self,
        key_value: str,
        fields: dict[str, Any],
        *,
        condition: str | None = None,
        values: dict[str, Any] | None = None,
        add: dict[str, float] | None = None,
        remove: tuple[str, ...] = (),
        append: dict[str, list[Any]] | None = None,
    ) -> dict[str, Any]:
        """SET ``fields`` (ADD ``add``, and ``append`` to lists) if ``condition`` holds; the new item.

        In ``condition``, refer to attributes as ``#name`` and values as ``:name``.
        """
        names: dict[str, str] = {}
        vals: dict[str, Any] = dict(values or {})
        sets: list[str] = []
        removes = list(remove) + [k for k, v in fields.items() if v is None]
        for i, (k, v) in enumerate((k, v) for k, v in fields.items() if v is not None):
            names[f"#f{i}"] = k
            vals[f":f{i}"] = v
            sets.append(f"#f{i} = :f{i}")
        for i, (k, items) in enumerate((append or {}).items()):
            names[f"#l{i}"] = k
            vals[f":l{i}"], vals[":empty_list"] = list(items), []
            sets.append(f"#l{i} = list_append(if_not_exists(#l{i}, :empty_list), :l{i})")
        clauses = []
        if sets:
            clauses.append("SET " + ", ".join(sets))
        if add:
            parts = []
            for i, (k, n) in enumerate(add.items()):
                names[f"#a{i}"] = k
                vals[f":a{i}"] = n
                parts.append(f"#a{i} :a{i}")
            clauses.append("ADD " + ", ".join(parts))
        if removes:
            for i, k in enumerate(removes):
                names[f"#r{i}"] = k
            clauses.append("REMOVE " + ", ".join(f"#r{i}" for i in range(len(removes))))
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": {self.key: {"S": key_value}},
            "UpdateExpression": " ".join(clauses),
            "ReturnValues": "ALL_NEW",
        }
        if condition:
            # Attributes in the condition are written as #name and mean themselves.
            names.update({f"#{token}": token for token in names_in(condition)})
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if vals:
            kwargs["ExpressionAttributeValues"] = serialize(vals)
        out = self._write(lambda: self._db.update_item(**kwargs))
        return deserialize(out.get("Attributes", {}))

    def query_index(self, index: str, key_name: str, key_value: str, *, limit: int = 100,
                    sort_key: str | None = None, sort_before: str | None = None) -> list[dict[str, Any]]:
        """Items whose index key equals ``key_value``, newest first, at most ``limit``.

        With ``sort_key`` and ``sort_before``, only items whose sort key is below that value.
        """
        condition = "#k = :v"
        names = {"#k": key_name}
        values = {":v": {"S": key_value}}
        if sort_key and sort_before is not None:
            condition += " AND #s < :s"
            names["#s"] = sort_key
            values[":s"] = {"S": sort_before}
        kwargs: dict[str, Any] = {
            "TableName": self.name, "IndexName": index, "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values, "ScanIndexForward": False,
        }
        items: list[dict[str, Any]] = []
        with sorted_errors(f"dynamodb:{self.name}"):
            while len(items) < limit:
                out = self._db.query(**kwargs, Limit=limit - len(items))
                items.extend(deserialize(i) for i in out.get("Items", []))
                if "LastEvaluatedKey" not in out:
                    break
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        return items

    def count_index(self, index: str, key_name: str, key_value: str, *, sort_key: str, sort_after: str,
                    where: tuple[str, str]) -> int:
        """How many items of the index key ``key_value``, sorted after ``sort_after``, have ``where`` = value."""
        kwargs: dict[str, Any] = {
            "TableName": self.name, "IndexName": index, "Select": "COUNT",
            "KeyConditionExpression": "#k = :v AND #s > :s", "FilterExpression": "#w = :w",
            "ExpressionAttributeNames": {"#k": key_name, "#s": sort_key, "#w": where[0]},
            "ExpressionAttributeValues": {":v": {"S": key_value}, ":s": {"S": sort_after}, ":w": {"S": where[1]}},
        }
        count = 0
        with sorted_errors(f"dynamodb:{self.name}"):
            while True:
                out = self._db.query(**kwargs)
                count += int(out.get("Count", 0))
                if "LastEvaluatedKey" not in out:
                    return count
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]

    def scan(self, *, where: tuple[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every item (``where``: only those whose attribute begins with the value), page by page.
        For operators' reports and tests; the request paths query indexes."""
        kwargs: dict[str, Any] = {"TableName": self.name}
        if where:
            kwargs.update(FilterExpression="begins_with(#w, :w)", ExpressionAttributeNames={"#w": where[0]},
                          ExpressionAttributeValues={":w": {"S": where[1]}})
        while True:
            with sorted_errors(f"dynamodb:{self.name}"):
                out = self._db.scan(**kwargs)
            yield from (deserialize(i) for i in out.get("Items", []))
            if "LastEvaluatedKey" not in out:
                return
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]

    def _write(self, call: Any) -> Any:
        with sorted_errors(f"dynamodb:{self.name}"):
            return call()


def names_in(expression: str) -> set[str]:
    """Attribute names written ``#name`` in a condition expression."""
    return set(re.findall(r"#([A-Za-z_][A-Za-z0-9_]*)", expression))


def now() -> float:
    """The time written into records: epoch seconds, to the millisecond."""
    return round(time.time(), 3)


def iso(ts: float) -> str:
    """Epoch seconds as the ISO-8601 UTC text the indexes sort on (``created_at``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
