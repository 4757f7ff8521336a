from dreamcore.cli import main

raise SystemExit(main())
