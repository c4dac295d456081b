from hllama.cli import main

raise SystemExit(main())
