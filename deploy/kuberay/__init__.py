"""The KubeRay RayService for the GPU serve configs (generate.py writes it)."""
