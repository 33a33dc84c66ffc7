"""Pure core: preset schema, overrides, dataset layout, the plan and the musubi-tuner contract."""
