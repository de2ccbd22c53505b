"""Redis adapters: the one key schema, the state codec, the partition store and its Lua, model and CLV stores."""
