"""The flashsale event contract: records, codec, topics. Imports nothing from other packages."""
