"""Model cards (Markdown + JSON) and a self-contained HTML report with plots, from a result folder."""
