"""Reading data files into cleaned, cached Arrow records: JSON lines and arrays (``records``), tables that
``datasets`` reads (``tables``), and the text cleaning both apply (``cleaning``, ``column_cleaning``)."""
