"""The domain, free of Qt and torch: templates, project store, images, import/export, metrics."""
