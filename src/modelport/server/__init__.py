"""The composition root: the one place that knows the concrete classes, builds modelport
from Settings, starts it and stops it. Builders sit below the runners that use them."""
