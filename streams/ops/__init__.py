"""Operations: Prometheus metrics and the journey map's text and SVG views."""
