"""The two things shoprec has features about."""

from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A shopper, by the shop's customer id.", tags={"owner": "features@shoprec"})  # fmt: skip
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A product, by the shop's stock code.", tags={"owner": "features@shoprec"})  # fmt: skip
