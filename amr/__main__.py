from amr.launch import main

main()
